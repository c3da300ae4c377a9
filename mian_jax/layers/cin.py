"""xDeepFM's Compressed Interaction Network (Lian et al., KDD 2018).

Legend: B batch, M fields (m), D embedding width, P feature maps of the previous layer (H_{k-1};
H_0 = M), H feature maps of this layer (H_k).

  X^0 = the field matrix [B, M, D]
  X^k_{h,*} = sum_{i<=H_{k-1}, j<=M} W^{k,h}_{ij} (X^{k-1}_{i,*} o X^0_{j,*})     [B, H_k, D]
  p^k = sum_d X^k_{*,d}                                                            [B, H_k]
  CIN(X^0) = [p^1; ...; p^L]                                                       [B, sum_k H_k]

As in the paper's equation: no bias, identity activation, and full layers (every layer's maps both
feed the next layer and are pooled; the reference code's split-half variant is not used).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class CIN(nn.Module):
  layer_sizes: Sequence[int]

  @nn.compact
  def __call__(self, x0_bmd: jax.Array) -> jax.Array:
    """X^0 [B, M, D] -> the pooled feature maps of every layer [B, sum(layer_sizes)]."""
    init = nn.initializers.lecun_normal(in_axis=(1, 2), out_axis=0)  # fan-in = H_{k-1} x M
    x_bpd, pooled = x0_bmd, []
    for k, h in enumerate(self.layer_sizes):
      w_hpm = self.param(f"w{k}", init, (h, x_bpd.shape[1], x0_bmd.shape[1]), jnp.float32)
      x_bpd = jnp.einsum("bpd,bmd,hpm->bhd", x_bpd, x0_bmd, w_hpm.astype(x0_bmd.dtype))
      pooled.append(x_bpd.sum(-1))
    return jnp.concatenate(pooled, axis=-1)
