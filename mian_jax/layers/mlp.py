"""The prediction tower: Dense + ReLU per hidden width (optional dropout), then one logit."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax


class MLP(nn.Module):
  hidden: Sequence[int]
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x_be: jax.Array, train: bool = False) -> jax.Array:
    """x [B, E] -> logit [B]."""
    for i, width in enumerate(self.hidden):
      x_be = nn.relu(nn.Dense(width, name=f"dense{i}")(x_be))
      if self.dropout:
        x_be = nn.Dropout(self.dropout, deterministic=not train)(x_be)
    return nn.Dense(1, name="logit")(x_be)[:, 0]
