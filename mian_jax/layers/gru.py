"""GRU and AUGRU cells (DIEN) and a masked scan over the history.

Legend: B batch, T history length, D input width, H state width.

GRU    [r, k] = sigmoid(W_g [x_t; h_{t-1}] + b_g)   (b_g init 1, as TF's GRUCell in the reference)
       c_t = tanh(W_c [x_t; r * h_{t-1}] + b_c);  update gate u = 1 - k
       h_t = (1 - u) h_{t-1} + u c_t                 (= k h + (1 - k) c, TF's form)
AUGRU  u' = a_t u;  h_t = (1 - u') h_{t-1} + u' c_t  (the DIEN paper's eq. 7-8: a_t = 0 keeps the state,
       a_t = 1 is a GRU step; both cells have the same parameters). The reference's VecAttGRUCell
       scales TF's keep gate instead (k' = (1 - a) k), which is not the paper's equation.
MaskedRNN  scans a cell over T; at padding (mask False) the state is carried unchanged, so the final
       carry is the state at the last real position (0 for an empty history). Returns (h [B,T,H], h_T [B,H]).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class GRUCell(nn.Module):
  features: int

  def setup(self):
    self.gates = nn.Dense(2 * self.features, bias_init=nn.initializers.ones)
    self.candidate = nn.Dense(self.features)

  def update(self, h_bh: jax.Array, x_bd: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(update gate u [B, H], candidate c [B, H])."""
    r_bh, k_bh = jnp.split(jax.nn.sigmoid(self.gates(jnp.concatenate([x_bd, h_bh], -1))), 2, axis=-1)
    c_bh = jnp.tanh(self.candidate(jnp.concatenate([x_bd, r_bh * h_bh], -1)))
    return 1.0 - k_bh, c_bh

  def __call__(self, h_bh: jax.Array, x_bd: jax.Array) -> jax.Array:
    u_bh, c_bh = self.update(h_bh, x_bd)
    return (1.0 - u_bh) * h_bh + u_bh * c_bh


class AUGRUCell(GRUCell):
  def __call__(self, h_bh: jax.Array, x_bd: jax.Array, a_b: jax.Array) -> jax.Array:
    u_bh, c_bh = self.update(h_bh, x_bd)
    u_bh = a_b[:, None].astype(u_bh.dtype) * u_bh
    return (1.0 - u_bh) * h_bh + u_bh * c_bh


class _MaskedStep(nn.Module):
  features: int
  attentional: bool

  @nn.compact
  def __call__(self, h_bh: jax.Array, inputs: tuple[jax.Array, jax.Array, jax.Array]):
    x_bd, m_b, a_b = inputs
    if self.attentional:
      new_bh = AUGRUCell(self.features, name="cell")(h_bh, x_bd, a_b)
    else:
      new_bh = GRUCell(self.features, name="cell")(h_bh, x_bd)
    h_bh = jnp.where(m_b[:, None], new_bh, h_bh)
    return h_bh, h_bh


class MaskedRNN(nn.Module):
  features: int
  attentional: bool = False  # AUGRU (needs att_bt) instead of GRU

  @nn.compact
  def __call__(self, x_btd: jax.Array, mask_bt: jax.Array,
               att_bt: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    b, t = mask_bt.shape
    if att_bt is None:
      att_bt = jnp.ones((b, t), x_btd.dtype)
    scan = nn.scan(_MaskedStep, variable_broadcast="params", split_rngs={"params": False}, in_axes=1, out_axes=1)
    h0_bh = jnp.zeros((b, self.features), x_btd.dtype)
    h_last_bh, h_bth = scan(self.features, self.attentional, name="scan")(h0_bh, (x_btd, mask_bt, att_bt))
    return h_bth, h_last_bh
