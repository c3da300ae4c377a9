"""LR: logistic regression on every input field's first-order weight.

Legend: B batch, F input fields.

  logit = b + sum_f w_f(x_f)      (w_f(x_f) = g.linear [B, F]; a sequence field's is its masked mean)

No embeddings are read; only the width-1 `linear:*` tables (linear_terms) and one bias.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from mian_jax.config import ModelConfig
from mian_jax.layers.embedding import Groups
from mian_jax.layers.fields import FirstOrder


class LR(nn.Module):
  cfg: ModelConfig
  linear_terms = True  # ClassVar: the trainer builds the first-order tables

  @nn.compact
  def __call__(self, g: Groups, train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    return FirstOrder(name="first_order")(g), {}
