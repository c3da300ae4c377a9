"""Wide & Deep (Cheng et al., DLRS 2016), trained jointly.

Legend: B batch, F fields (item, pooled behaviour, user, context), D embedding width.

  wide  = b + sum_f w_f(x_f)                       (first-order weights g.linear [B, F])
  deep  = MLP(flatten(field_matrix) [B, F D])      (Dense + ReLU per cfg.mlp width, then 1 unit)
  logit = wide + deep
"""

from __future__ import annotations

import flax.linen as nn
import jax

from mian_jax.config import ModelConfig
from mian_jax.layers.embedding import Groups
from mian_jax.layers.fields import FirstOrder, field_matrix, flat
from mian_jax.layers.mlp import MLP


class WideDeep(nn.Module):
  cfg: ModelConfig
  linear_terms = True

  @nn.compact
  def __call__(self, g: Groups, train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    x_bfd = field_matrix(g)
    wide_b = FirstOrder(name="first_order")(g)
    deep_b = MLP(self.cfg.mlp, self.cfg.dropout, name="mlp")(flat(x_bfd), train)
    return wide_b + deep_b, {}
