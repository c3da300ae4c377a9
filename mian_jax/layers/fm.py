"""Factorization machine's second-order term (Rendle, 2010), by the O(F D) identity.

Legend: B batch, F fields, D embedding width.

  sum_{i<j} <v_i, v_j> = 0.5 * sum_d ((sum_f v_{f,d})^2 - sum_f v_{f,d}^2)
"""

from __future__ import annotations

import jax


def fm_second_order(v_bfd: jax.Array) -> jax.Array:
  """[B, F, D] -> [B]: the sum of the inner products of every pair of distinct fields."""
  square_of_sum_bd = v_bfd.sum(1) ** 2
  sum_of_square_bd = (v_bfd**2).sum(1)
  return 0.5 * (square_of_sum_bd - sum_of_square_bd).sum(-1)
