"""DIN's local activation unit (target attention) of a query over a sequence of keys.

Legend: B batch, T positions, Dq query width, E key width, A_l attention hidden widths.

q     = e_i, or PReLU(Dense_E(e_i)) with project_query (DIEN's din_fcn_attention, whose keys are GRU
        states of another width; PReLU alpha per unit, init 0.1, as the reference's prelu)
s_t   = MLP_A([q, k_t, q - k_t, q * k_t]) -> Dense(1)      hidden activations: sigmoid, the reference
        code's choice (din_attention / din_fcn_attention in github.com/mouna99/dien; the DIN paper names
        PReLU / Dice)
w_t   = s_t at real positions, 0 at padding (normalise=False: DIN, the paper's "softmax abandoned"), or
        softmax_t over the real positions (normalise=True: DIEN's AUGRU scores, softmax_stag=1)
out   = sum_t w_t k_t  [B, E];  returns (out, w [B, T])
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mian_jax.layers.attention import masked_softmax


class TargetAttention(nn.Module):
  hidden: Sequence[int]
  normalise: bool = False
  project_query: bool = False

  @nn.compact
  def __call__(self, q_bd: jax.Array, k_bte: jax.Array, mask_bt: jax.Array) -> tuple[jax.Array, jax.Array]:
    e = k_bte.shape[-1]
    if self.project_query:
      q_bd = nn.Dense(e, name="query")(q_bd)
      alpha = self.param("prelu_alpha", nn.initializers.constant(0.1), (e,))
      q_bd = jnp.maximum(q_bd, 0.0) + alpha * jnp.minimum(q_bd, 0.0)
    q_bte = jnp.broadcast_to(q_bd[:, None, :], k_bte.shape)
    x = jnp.concatenate([q_bte, k_bte, q_bte - k_bte, q_bte * k_bte], axis=-1)
    for i, width in enumerate(self.hidden):
      x = jax.nn.sigmoid(nn.Dense(width, name=f"dense{i}")(x))
    s_bt = nn.Dense(1, name="score")(x)[..., 0]
    if self.normalise:
      w_bt = masked_softmax(s_bt, mask_bt)  # float32; an empty history gets all 0
    else:
      w_bt = jnp.where(mask_bt, s_bt, 0.0)
    return jnp.einsum("bt,bte->be", w_bt.astype(k_bte.dtype), k_bte), w_bt
