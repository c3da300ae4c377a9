"""GRU and AUGRU cells (DIEN) and a masked scan over the history.

Legend: B batch, T history length, D input width, H state width.

GRU    [r, k] = sigmoid(W_g [x_t; h_{t-1}] + b_g)   (b_g init 1, as TF's GRUCell in the reference)
       c_t = tanh(W_c [x_t; r * h_{t-1}] + b_c);  update gate u = 1 - k
       h_t = (1 - u) h_{t-1} + u c_t                 (= k h + (1 - k) c, TF's form)
AUGRU  u' = a_t u;  h_t = (1 - u') h_{t-1} + u' c_t  (the DIEN paper's eq. 7-8: a_t = 0 keeps the state,
       a_t = 1 is a GRU step; both cells have the same parameters). The reference's VecAttGRUCell
       scales TF's keep gate instead (k' = (1 - a) k), which is not the paper's equation.
MaskedRNN  runs a cell over T; at padding (mask False) the state is carried unchanged, so the final
       carry is the state at the last real position (0 for an empty history). Returns (h [B,T,H], h_T [B,H]).

How MaskedRNN computes (the cells above are the reference it is tested against; the parameters are
theirs, under `scan/cell/gates` and `scan/cell/candidate`):
- the loop is a while loop up to the last real step of its rows, not always T steps;
- on GPU / TPU (`HOIST`) the input parts of the gates, x_t W[:D] + b, are two matmuls over all T steps
  before the loop, which keeps only the recurrent matmuls; the backward loop stores each step's
  pre-activation gradients, and dx and the weight gradients are matmuls over all steps after it;
- its gradient is written out (`_masked_gru`, a custom VJP): a reverse loop recomputes each step's gates
  from x_t and h_{t-1} instead of storing them, and accumulates the parameters' gradients itself;
- on CPU the rows are sorted by their last real step and run as groups of ROWS_PER_GROUP rows, each
  group's loops only as long as its longest history (they are independent: two cores run two at once).
Why: on 2 CPU cores (B = 1024, T = 50, D = H = 36, AUGRU forward + backward) this takes 80 ms (lengths
uniform in [25, 50]) and 50 ms (Yelp-like lengths, mean 10), against 141 ms and 138 ms for a scan of
Flax cells (measured with the code of commit 3eaadd6; `benchmarks/blocks.py` times these layers).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mian_jax.layers.chunks import last_real
from mian_jax.layers.params import DenseParams


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


ROWS_PER_GROUP = 256
# The input projections of all T steps as matmuls outside the loops (True), or inside each step (False);
# None: outside on GPU / TPU (the loops' small GEMMs are their time), inside on CPU, whose loops run only up
# to each group's longest history (hoisted, they cover every position: DIEN's CPU step took 0.77x as long).
HOIST: bool | None = None


def _at(x_bt, t):
  """x[:, t] of a [B, T, ...] array."""
  return jax.lax.dynamic_index_in_dim(x_bt, t, axis=1, keepdims=False)


def _put(x_bt, t, value):
  """x with x[:, t] = value."""
  return jax.lax.dynamic_update_index_in_dim(x_bt, value, t, axis=1)


def _groups(b) -> list[slice]:
  """Slices of a batch of b rows into groups of about ROWS_PER_GROUP rows on CPU; one group on GPU / TPU
  (whose time is the loops' sequential steps, not their rows) and for a symbolic batch size."""
  if jax.default_backend() != "cpu" or not isinstance(b, int):
    return [slice(None)]
  count = max(1, round(b / ROWS_PER_GROUP))
  bounds = [round(i * b / count) for i in range(count + 1)]
  return [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]


def _inputs(x_btd, w):
  """The input parts of every step's gate and candidate pre-activations, as two matmuls over all T steps:
  (x W_g[:D] + b_g [R, T, 2H], x W_c[:D] + b_c [R, T, H])."""
  w_g, b_g, w_c, b_c = w
  d = x_btd.shape[-1]
  return x_btd @ w_g[:d] + b_g, x_btd @ w_c[:d] + b_c


def _gates(xg, xc, h, a, w):
  """One step's (r, k, c, u) from its input parts xg [R, 2H], xc [R, H], state h [R, H], attention a [R, 1]."""
  w_g, _, w_c, _ = w
  h_dim = h.shape[-1]
  r, k = jnp.split(jax.nn.sigmoid(xg + h @ w_g[-h_dim:]), 2, axis=-1)
  c = jnp.tanh(xc + (r * h) @ w_c[-h_dim:])
  return r, k, c, a * (1.0 - k)


def _forward_loop(x_btd, m_bt, a_bt, w, gates):
  """One group's loop over t < n (its rows' last real step): h [R, T, H] (h_{n-1} after step n - 1);
  gates(t, h, a) gives step t's (r, k, c, u) from the state and the attention a [R, 1]."""
  t_len, h_dim = x_btd.shape[1], w[2].shape[1]
  n = jnp.max(last_real(m_bt))

  def step(t, carry):
    h, hs = carry
    _, _, c, u = gates(t, h, _at(a_bt, t)[:, None])
    h = jnp.where(_at(m_bt, t)[:, None], h + u * (c - h), h)
    return h, _put(hs, t, h)

  init = (jnp.zeros((x_btd.shape[0], h_dim), x_btd.dtype), jnp.zeros(x_btd.shape[:2] + (h_dim,), x_btd.dtype))
  h_last, hs = jax.lax.fori_loop(0, n, step, init)
  return jnp.where((jnp.arange(t_len) < n)[None, :, None], hs, h_last[:, None])


def _forward_hoisted(x_btd, m_bt, a_bt, w):
  """The loop with every step's input parts computed before it (`HOIST`)."""
  xg, xc = _inputs(x_btd, w)
  return _forward_loop(x_btd, m_bt, a_bt, w, lambda t, h, a: _gates(_at(xg, t), _at(xc, t), h, a, w))


def _backward_hoisted(x_btd, m_bt, a_bt, hs, dhs, w):
  """One group's reverse loop (the gates recomputed from the input parts and h_{t-1}, not stored) keeps
  only the recurrence: each step's pre-activation gradients are stored, and dx [R, T, D] and the
  parameters' gradients are matmuls over all T steps after it. Also returns da [R, T]."""
  w_g, _, w_c, _ = w
  t_len, d = x_btd.shape[1], x_btd.shape[2]
  h_dim = w_c.shape[1]
  n = jnp.max(last_real(m_bt))
  dh0 = jnp.sum(jnp.where((jnp.arange(t_len) >= n)[None, :, None], dhs, 0.0), 1)  # states past n - 1 are h_{n-1}
  xg, xc = _inputs(x_btd, w)
  h_prev = jnp.pad(hs[:, :-1], ((0, 0), (1, 0), (0, 0)))  # h_{t-1}, 0 before the first step

  def step(i, carry):
    dh, dzg_all, dzc_all, rh_all, da = carry
    t = n - 1 - i
    m, a, h = _at(m_bt, t)[:, None], _at(a_bt, t)[:, None], _at(h_prev, t)
    r, k, c, u = _gates(_at(xg, t), _at(xc, t), h, a, w)
    dh = dh + _at(dhs, t)
    dhm = jnp.where(m, dh, 0.0)  # padding: h_t = h_{t-1}, nothing below it is reached
    dzc = dhm * u * (1.0 - c * c)
    drh = dzc @ w_c[d:].T
    dzg = jnp.concatenate([drh * h * r * (1.0 - r), -a * dhm * (c - h) * k * (1.0 - k)], -1)
    dh = jnp.where(m, dh * (1.0 - u), dh) + drh * r + dzg @ w_g[d:].T
    da = _put(da, t, jnp.sum(dhm * (1.0 - k) * (c - h), -1))
    return dh, _put(dzg_all, t, dzg), _put(dzc_all, t, dzc), _put(rh_all, t, r * h), da

  zeros = lambda width: jnp.zeros(x_btd.shape[:2] + (width,), x_btd.dtype)
  init = (dh0, zeros(2 * h_dim), zeros(h_dim), zeros(h_dim), jnp.zeros_like(a_bt))
  _, dzg, dzc, rh, da = jax.lax.fori_loop(0, n, step, init)  # steps from n on stay 0: never run
  dx = dzg @ w_g[:d].T + dzc @ w_c[:d].T
  outer = lambda a_btx, b_bty: jnp.einsum("btx,bty->xy", a_btx, b_bty)
  dw = (
    jnp.concatenate([outer(x_btd, dzg), outer(h_prev, dzg)]),
    dzg.sum((0, 1)),
    jnp.concatenate([outer(x_btd, dzc), outer(rh, dzc)]),
    dzc.sum((0, 1)),
  )
  return dx, da, dw


def _gates_stepwise(x, h, a, w):
  """One step's (r, k, c, u) for inputs x [R, D], state h [R, H], attention a [R, 1]."""
  w_g, b_g, w_c, b_c = w
  r, k = jnp.split(jax.nn.sigmoid(jnp.concatenate([x, h], -1) @ w_g + b_g), 2, axis=-1)
  c = jnp.tanh(jnp.concatenate([x, r * h], -1) @ w_c + b_c)
  return r, k, c, a * (1.0 - k)


def _forward_stepwise(x_btd, m_bt, a_bt, w):
  """The loop with each step projecting its own input (the CPU's form, `HOIST`)."""
  return _forward_loop(x_btd, m_bt, a_bt, w, lambda t, h, a: _gates_stepwise(_at(x_btd, t), h, a, w))


def _backward_stepwise(x_btd, m_bt, a_bt, hs, dhs, w):
  """One group's reverse loop (the gates recomputed from x_t and h_{t-1}, not stored): dx [R, T, D],
  da [R, T] and the parameters' gradients, accumulated per step."""
  w_g, _, w_c, _ = w
  t_len, d = x_btd.shape[1], x_btd.shape[2]
  n = jnp.max(last_real(m_bt))
  dh0 = jnp.sum(jnp.where((jnp.arange(t_len) >= n)[None, :, None], dhs, 0.0), 1)  # states past n - 1 are h_{n-1}

  def step(i, carry):
    dh, dx, da, dw = carry
    t = n - 1 - i
    x, m, a = _at(x_btd, t), _at(m_bt, t)[:, None], _at(a_bt, t)[:, None]
    h = jnp.where(t > 0, _at(hs, jnp.maximum(t - 1, 0)), 0.0)
    r, k, c, u = _gates_stepwise(x, h, a, w)
    dh = dh + _at(dhs, t)
    dhm = jnp.where(m, dh, 0.0)  # padding: h_t = h_{t-1}, nothing below it is reached
    dzc = dhm * u * (1.0 - c * c)
    dxc, drh = jnp.split(dzc @ w_c.T, [d], axis=-1)
    dzg = jnp.concatenate([drh * h * r * (1.0 - r), -a * dhm * (c - h) * k * (1.0 - k)], -1)
    dxg, dhg = jnp.split(dzg @ w_g.T, [d], axis=-1)
    dh = jnp.where(m, dh * (1.0 - u), dh) + drh * r + dhg
    dw = (
      dw[0] + jnp.concatenate([x, h], -1).T @ dzg,
      dw[1] + dzg.sum(0),
      dw[2] + jnp.concatenate([x, r * h], -1).T @ dzc,
      dw[3] + dzc.sum(0),
    )
    return dh, _put(dx, t, dxc + dxg), _put(da, t, jnp.sum(dhm * (1.0 - k) * (c - h), -1)), dw

  init = (dh0, jnp.zeros_like(x_btd), jnp.zeros_like(a_bt), jax.tree.map(jnp.zeros_like, w))
  _, dx, da, dw = jax.lax.fori_loop(0, n, step, init)
  return dx, da, dw


def _hoist() -> bool:
  return HOIST if HOIST is not None else jax.default_backend() != "cpu"


def _forward(x_btd, m_bt, a_bt, w):
  return (_forward_hoisted if _hoist() else _forward_stepwise)(x_btd, m_bt, a_bt, w)


def _backward(x_btd, m_bt, a_bt, hs, dhs, w):
  return (_backward_hoisted if _hoist() else _backward_stepwise)(x_btd, m_bt, a_bt, hs, dhs, w)


@jax.custom_vjp
def _masked_gru(x_btd, m_bt, a_bt, w):
  """h [B, T, H] of the masked (AU)GRU recursion; w = (W_g [D + H, 2H], b_g, W_c [D + H, H], b_c)."""
  return _masked_gru_fwd(x_btd, m_bt, a_bt, w)[0]


def _masked_gru_fwd(x_btd, m_bt, a_bt, w):
  groups = _groups(x_btd.shape[0])
  order = jnp.argsort(last_real(m_bt)) if len(groups) > 1 else None  # the rows by their last real step
  xs, ms, as_ = (x_btd, m_bt, a_bt) if order is None else (x_btd[order], m_bt[order], a_bt[order])
  hs = jnp.concatenate([_forward(xs[g], ms[g], as_[g], w) for g in groups])
  return _unsort(hs, order), (xs, ms, as_, hs, order, w)


def _unsort(x, order):
  return x if order is None else x[jnp.argsort(order)]


def _masked_gru_bwd(res, dhs_bth):
  xs, ms, as_, hs, order, w = res
  dhs = dhs_bth if order is None else dhs_bth[order]
  outs = [_backward(xs[g], ms[g], as_[g], hs[g], dhs[g], w) for g in _groups(xs.shape[0])]
  dx = _unsort(jnp.concatenate([o[0] for o in outs]), order)
  da = _unsort(jnp.concatenate([o[1] for o in outs]), order)
  return dx, None, da, jax.tree.map(lambda *g: sum(g), *[o[2] for o in outs])


_masked_gru.defvjp(_masked_gru_fwd, _masked_gru_bwd)


class _Cell(nn.Module):
  """GRUCell's parameters: gates {kernel [D + H, 2H], bias (init 1)}, candidate {kernel [D + H, H], bias}."""

  features: int

  @nn.compact
  def __call__(self, fan_in: int) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    return (
      DenseParams((2 * self.features,), nn.initializers.ones, name="gates")((fan_in,)),
      DenseParams((self.features,), name="candidate")((fan_in,)),
    )


class _Scan(nn.Module):
  """The cell's parameters under `scan/cell/`, where the scan of Flax cells kept them (checkpoints of it
  restore)."""

  features: int

  @nn.compact
  def __call__(self, fan_in: int):
    return _Cell(self.features, name="cell")(fan_in)


class MaskedRNN(nn.Module):
  features: int
  attentional: bool = False  # AUGRU (needs att_bt) instead of GRU

  @nn.compact
  def __call__(
    self, x_btd: jax.Array, mask_bt: jax.Array, att_bt: jax.Array | None = None
  ) -> tuple[jax.Array, jax.Array]:
    b, t, d = x_btd.shape
    h = self.features
    if att_bt is None or not self.attentional:
      att_bt = jnp.ones((b, t), x_btd.dtype)
    gates, candidate = jax.tree.map(lambda p: p.astype(x_btd.dtype), _Scan(h, name="scan")(d + h))
    w = (gates["kernel"], gates["bias"], candidate["kernel"], candidate["bias"])
    h_bth = _masked_gru(x_btd, mask_bt, att_bt.astype(x_btd.dtype), w)
    return h_bth, h_bth[:, -1]
