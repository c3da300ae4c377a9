"""DeepFM (Guo et al., IJCAI 2017): FM and a deep tower sharing the embeddings.

Legend: B batch, F fields (item, pooled behaviour, user, context), D embedding width; v_f [D] the
embedding of field f (a row of the field matrix).

  fm    = b + sum_f w_f(x_f) + sum_{i<j} <v_i, v_j>      (first order g.linear [B, F]; fm_second_order)
  deep  = MLP(flatten(field_matrix) [B, F D])
  logit = fm + deep
"""

from __future__ import annotations

import flax.linen as nn
import jax

from mian_jax.config import ModelConfig
from mian_jax.layers.embedding import Groups
from mian_jax.layers.fields import FirstOrder, field_matrix, flat
from mian_jax.layers.fm import fm_second_order
from mian_jax.layers.mlp import MLP


class DeepFM(nn.Module):
  cfg: ModelConfig
  linear_terms = True

  @nn.compact
  def __call__(self, g: Groups, train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    x_bfd = field_matrix(g)
    fm_b = FirstOrder(name="first_order")(g) + fm_second_order(x_bfd)
    deep_b = MLP(self.cfg.mlp, self.cfg.dropout, name="mlp")(flat(x_bfd), train)
    return fm_b + deep_b, {}
