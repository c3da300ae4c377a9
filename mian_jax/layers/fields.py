"""The four groups as one field matrix, for the models that treat every field alike (the zoo's baselines).

Legend: B batch, F fields, D embedding width, Di = n_item x D.

field_matrix(g) [B, F, D]: the candidate's item fields (e_i split into its n_item fields), the
behaviours masked-mean pooled (split the same way; the side fields such as the behaviour's age are
already added into them), then every user field and every context field. F = 2 n_item + J + K.
FirstOrder()(g) [B]: b + sum_f w_f(x_f), the linear part of LR / Wide&Deep / DeepFM / xDeepFM.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mian_jax.layers.embedding import Groups


def pooled_behaviour(g: Groups) -> jax.Array:
  """Masked mean of the behaviours [B, Di] (0 for an empty history)."""
  count_b1 = jnp.maximum(g.mask.sum(1, keepdims=True), 1).astype(g.behaviour.dtype)
  return g.behaviour.sum(1) / count_b1


def field_matrix(g: Groups) -> jax.Array:
  """[B, F, D]: item fields, pooled behaviour fields, user fields, context fields."""
  b, d = g.item.shape[0], g.user.shape[-1]  # an empty group still has width D (embedding.embed)
  item_bnd = g.item.reshape(b, -1, d)
  beh_bnd = pooled_behaviour(g).reshape(b, -1, d)
  return jnp.concatenate([item_bnd, beh_bnd, g.user, g.context], axis=1)


class FirstOrder(nn.Module):
  """b + sum_f w_f(x_f) [B] from the first-order weights g.linear [B, F] (models with linear_terms)."""

  @nn.compact
  def __call__(self, g: Groups) -> jax.Array:
    return self.param("bias", nn.initializers.zeros, (), jnp.float32) + g.linear.sum(-1)


def flat(x_bfd: jax.Array) -> jax.Array:
  """[B, F, D] -> [B, F D], the MLP input."""
  return x_bfd.reshape(x_bfd.shape[0], -1)
