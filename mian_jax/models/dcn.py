"""DCN: Deep & Cross Network (Wang et al., ADKDD 2017).

Legend: B batch, F fields (item, pooled behaviour, user, context), D embedding width, E = F D.

  x_0   = flatten(field_matrix)                                   [B, E]
  cross = CrossNet(cfg.cross_layers)(x_0)                         [B, E]
  deep  = (Dense + ReLU)^{cfg.mlp}(x_0)                           [B, cfg.mlp[-1]]
  logit = Dense(1)([cross; deep])                                 [B]
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mian_jax.config import ModelConfig
from mian_jax.layers.cross import CrossNet
from mian_jax.layers.embedding import Groups
from mian_jax.layers.fields import field_matrix, flat


class DCN(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, g: Groups, train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    x_bfd = field_matrix(g)
    x0_be = flat(x_bfd)
    cross_be = CrossNet(self.cfg.cross_layers, name="cross")(x0_be)
    deep_bh = x0_be
    for i, width in enumerate(self.cfg.mlp):
      deep_bh = nn.relu(nn.Dense(width, name=f"deep{i}")(deep_bh))
      if self.cfg.dropout:
        deep_bh = nn.Dropout(self.cfg.dropout, deterministic=not train)(deep_bh)
    return nn.Dense(1, name="logit")(jnp.concatenate([cross_be, deep_bh], axis=-1))[:, 0], {}
