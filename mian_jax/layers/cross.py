"""DCN's cross network (Wang et al., ADKDD 2017).

Legend: B batch, E input width (the flattened field matrix).

  x_{l+1} = x_0 (x_l^T w_l) + b_l + x_l,   w_l, b_l in R^E

Every layer keeps width E; CrossNet(L) stacks L such layers, all reading the same x_0.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class CrossLayer(nn.Module):
  @nn.compact
  def __call__(self, x0_be: jax.Array, xl_be: jax.Array) -> jax.Array:
    """(x_0, x_l) [B, E] -> x_{l+1} [B, E]."""
    e = x0_be.shape[-1]
    w_e = self.param("w", nn.initializers.normal(1.0 / jnp.sqrt(e)), (e,), jnp.float32)
    b_e = self.param("b", nn.initializers.zeros, (e,), jnp.float32)
    s_b1 = (xl_be @ w_e.astype(xl_be.dtype))[:, None]  # x_l^T w_l, a scalar per example
    return x0_be * s_b1 + b_e.astype(xl_be.dtype) + xl_be


class CrossNet(nn.Module):
  layers: int

  @nn.compact
  def __call__(self, x0_be: jax.Array) -> jax.Array:
    """x_0 [B, E] -> x_L [B, E]."""
    x_be = x0_be
    for i in range(self.layers):
      x_be = CrossLayer(name=f"cross{i}")(x0_be, x_be)
    return x_be
