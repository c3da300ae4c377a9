"""The parameters of Flax's Dense / DenseGeneral and LayerNorm, declared without their computation, and the
LayerNorm as a function.

The sequence layers compute with plain functions of their parameters, so that the computation can run
inside `jax.lax.map` / `jax.checkpoint` / a custom VJP (layers/chunks.py, layers/gru.py), where Flax
submodules cannot be called. Declared here with Flax's names, shapes and initialisers, the parameter
trees stay what the Flax layers made, and earlier checkpoints restore.
"""

from __future__ import annotations

import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

EPS = 1e-6  # nn.LayerNorm's epsilon


class DenseParams(nn.Module):
  """{kernel: in_shape + out_shape, bias: out_shape} as nn.Dense (in_shape (D,), out_shape (F,)) or
  nn.DenseGeneral makes them: the kernel lecun-normal over fan-in prod(in_shape), the bias `bias_init`."""

  out_shape: tuple[int, ...]
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, in_shape: tuple[int, ...]) -> dict[str, jax.Array]:
    flat = (math.prod(in_shape), math.prod(self.out_shape))
    init = lambda key, shape, dtype=jnp.float32: nn.linear.default_kernel_init(key, flat, dtype).reshape(shape)
    return {
      "kernel": self.param("kernel", init, tuple(in_shape) + tuple(self.out_shape)),
      "bias": self.param("bias", self.bias_init, tuple(self.out_shape)),
    }


class LayerNormParams(nn.Module):
  """{scale: [E] ones, bias: [E] zeros} as nn.LayerNorm makes them."""

  @nn.compact
  def __call__(self, width: int) -> dict[str, jax.Array]:
    return {
      "scale": self.param("scale", nn.initializers.ones, (width,)),
      "bias": self.param("bias", nn.initializers.zeros, (width,)),
    }


def layer_norm(x: jax.Array, p: dict[str, jax.Array]) -> jax.Array:
  """nn.LayerNorm over the last axis with its parameters p: statistics in float32, var = E[x^2] - E[x]^2
  (clipped at 0)."""
  scale, bias = p["scale"], p["bias"]
  x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  mean = x32.mean(-1, keepdims=True)
  var = jnp.maximum(jnp.mean(jnp.square(x32), -1, keepdims=True) - jnp.square(mean), 0.0)
  y = (x32 - mean) * (jax.lax.rsqrt(var + EPS) * scale) + bias
  return y.astype(jnp.result_type(x, scale, bias))
