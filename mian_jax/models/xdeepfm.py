"""xDeepFM (Lian et al., KDD 2018): linear + CIN + deep tower, on shared embeddings.

Legend: B batch, F fields (item, pooled behaviour, user, context), D embedding width,
H = sum(cfg.cin_layers).

  linear = b + sum_f w_f(x_f)                          (first-order weights g.linear [B, F])
  cin    = Dense(1)(CIN(cfg.cin_layers)(field_matrix [B, F, D]) [B, H])
  deep   = MLP(flatten(field_matrix) [B, F D])
  logit  = linear + cin + deep
"""

from __future__ import annotations

import flax.linen as nn
import jax

from mian_jax.config import ModelConfig
from mian_jax.layers.cin import CIN
from mian_jax.layers.embedding import Groups
from mian_jax.layers.fields import FirstOrder, field_matrix, flat
from mian_jax.layers.mlp import MLP


class XDeepFM(nn.Module):
  cfg: ModelConfig
  linear_terms = True

  @nn.compact
  def __call__(self, g: Groups, train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    x_bfd = field_matrix(g)
    linear_b = FirstOrder(name="first_order")(g)
    cin_b = nn.Dense(1, name="cin_logit")(CIN(self.cfg.cin_layers, name="cin")(x_bfd))[:, 0]
    deep_b = MLP(self.cfg.mlp, self.cfg.dropout, name="mlp")(flat(x_bfd), train)
    return linear_b + cin_b + deep_b, {}
