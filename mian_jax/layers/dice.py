"""Dice (DIN's data-adaptive activation) and the Dice prediction tower of DIN / DIEN.

Legend: B batch, E width (any leading axes are batch axes).

Dice  training:   mean_e = mean_B x_e;  var_e = mean_B (x_e - mean_e)^2   (the current batch's moments)
      otherwise:  mean_e, var_e = their running averages (collection `batch_stats`: `mean`, `var`),
                  updated at every training step as m <- momentum m + (1 - momentum) batch moment
                  (momentum 0.99, Flax BatchNorm's; they start at mean 0, var 1)
      std_e = sqrt(var_e + eps);  p = sigmoid((x - mean) / (std + eps));  out = p x + (1 - p) alpha x,
      alpha [E] learned (init 0). In training this is the reference code's `dice` term for term
      (github.com/mouna99/dien, script/utils.py, eps = 1e-9). At evaluation, prediction and export the
      running moments are used, as the DIN paper prescribes ("E[s] and Var[s] ... in testing phase are
      calculated by moving averages over data"), so a row's score does not depend on its batch mates.
      (The reference code normalises with the evaluation batch's moments; a score then changes with the
      batch size.) Under data parallelism the training moments are over the global batch.
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
MOMENTUM = 0.99


class Dice(nn.Module):
  eps: float = EPS
  momentum: float = MOMENTUM

  @nn.compact
  def __call__(self, x_be: jax.Array, train: bool = False) -> jax.Array:
    width = x_be.shape[-1]
    alpha_e = self.param("alpha", nn.initializers.zeros, (width,))
    run_mean = self.variable("batch_stats", "mean", jnp.zeros, (width,), jnp.float32)
    run_var = self.variable("batch_stats", "var", jnp.ones, (width,), jnp.float32)
    x = x_be.astype(jnp.float32)
    if train:
      axes = tuple(range(x.ndim - 1))
      mean_e = x.mean(axes)
      var_e = jnp.mean(jnp.square(x - mean_e), axes)
      if not self.is_initializing() and self.is_mutable_collection("batch_stats"):
        m = self.momentum
        run_mean.value = m * run_mean.value + (1.0 - m) * jax.lax.stop_gradient(mean_e)
        run_var.value = m * run_var.value + (1.0 - m) * jax.lax.stop_gradient(var_e)
    else:
      mean_e, var_e = run_mean.value, run_var.value
    std_e = jnp.sqrt(var_e + self.eps)
    p = jax.nn.sigmoid((x - mean_e) / (std_e + self.eps))
    return (p * x + (1.0 - p) * alpha_e * x).astype(x_be.dtype)


class DiceMLP(nn.Module):
  hidden: Sequence[int]
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x_be: jax.Array, train: bool = False) -> jax.Array:
    """x [B, E] -> logit [B]."""
    for i, width in enumerate(self.hidden):
      x_be = Dice(name=f"dice{i}")(nn.Dense(width, name=f"dense{i}")(x_be), train)
      if self.dropout:
        x_be = nn.Dropout(self.dropout, deterministic=not train)(x_be)
    return nn.Dense(1, name="logit")(x_be)[:, 0]
