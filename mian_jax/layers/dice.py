"""Dice (DIN's data-adaptive activation) and the Dice prediction tower of DIN / DIEN.

Legend: B batch, E width (any leading axes are batch axes).

Dice  mean_e = mean_B x_e;  std_e = sqrt(mean_B((x_e - mean_e)^2 + eps))
      p = sigmoid((x - mean) / (std + eps));  out = p x + (1 - p) alpha x,  alpha [E] learned (init 0)
      This is the reference code's `dice` (github.com/mouna99/dien, script/utils.py, eps = 1e-9) term
      for term. As there, the moments are those of the current batch in training AND in evaluation
      (no running statistics: the trainer carries only `params`), so Dice takes no `train` flag.
      Under data parallelism the mean is over the global batch (XLA reduces across devices).
DiceMLP  Dense -> Dice (-> dropout) per hidden width, then one logit: the reference's build_fcn_net
      (200-80, use_dice=True). Its 2-way softmax head is a sigmoid of one logit; its input
      batch-normalisation (bn1, always in inference mode there) is an affine map the first Dense absorbs,
      so it is left out.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

EPS = 1e-9  # the reference's epsilon


class Dice(nn.Module):
  eps: float = EPS

  @nn.compact
  def __call__(self, x_be: jax.Array) -> jax.Array:
    alpha_e = self.param("alpha", nn.initializers.zeros, (x_be.shape[-1],))
    x = x_be.astype(jnp.float32)
    axes = tuple(range(x.ndim - 1))
    mean_e = x.mean(axes)
    std_e = jnp.sqrt(jnp.mean(jnp.square(x - mean_e) + self.eps, axes))
    p = jax.nn.sigmoid((x - mean_e) / (std_e + self.eps))
    return (p * x + (1.0 - p) * alpha_e * x).astype(x_be.dtype)


class DiceMLP(nn.Module):
  hidden: Sequence[int]
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x_be: jax.Array, train: bool = False) -> jax.Array:
    """x [B, E] -> logit [B]."""
    for i, width in enumerate(self.hidden):
      x_be = Dice(name=f"dice{i}")(nn.Dense(width, name=f"dense{i}")(x_be))
      if self.dropout:
        x_be = nn.Dropout(self.dropout, deterministic=not train)(x_be)
    return nn.Dense(1, name="logit")(x_be)[:, 0]
