"""Additive attention pooling as MIAN writes it: alpha = softmax(tanh(V W + b)), R = sum alpha V.

Legend: B batch, L positions (behaviours T, or fields J / K), E width of V.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def masked_softmax(scores: jax.Array, mask: jax.Array | None, sink: jax.Array | None = None) -> jax.Array:
  """softmax over the last axis in float32; masked positions get exactly 0 (all masked: all 0).

  With `sink` (a scalar logit b) the softmax runs over one more, empty position: alpha_l = exp(s_l) /
  (exp(b) + sum_l' exp(s_l')), so the weights sum to less than 1 and how much there is to attend to
  is kept (an empty or irrelevant sequence pools to near 0)."""
  scores = scores.astype(jnp.float32)
  if mask is not None:
    scores = jnp.where(mask, scores, -1e9)
  if sink is not None:
    null = jnp.broadcast_to(jnp.asarray(sink, jnp.float32), scores.shape[:-1] + (1,))
    weights = jax.nn.softmax(jnp.concatenate([scores, null], axis=-1), axis=-1)[..., :-1]
  else:
    weights = jax.nn.softmax(scores, axis=-1)
  return weights if mask is None else weights * mask


class AdditivePool(nn.Module):
  """One shared (W [E], b): alpha_l = softmax_l(tanh(V_l . W + b)); returns (sum_l alpha_l V_l [B, E], alpha [B, L]).
  With `sink`, the softmax has a learned null position (masked_softmax; parameter `sink`, init 0)."""

  sink: bool = False

  @nn.compact
  def __call__(self, v_ble: jax.Array, mask_bl: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    score_bl = jnp.tanh(nn.Dense(1, name="score")(v_ble)[..., 0])
    sink = self.param("sink", nn.initializers.zeros, ()) if self.sink else None
    alpha_bl = masked_softmax(score_bl, mask_bl, sink)
    return jnp.einsum("bl,ble->be", alpha_bl.astype(v_ble.dtype), v_ble), alpha_bl


class FieldwiseAdditivePool(nn.Module):
  """A separate (W_l [E], b_l) per position l (IUIM / ICIM / GIM): alpha_l = softmax_l(tanh(V_l . W_l + b_l))."""

  @nn.compact
  def __call__(self, v_ble: jax.Array) -> tuple[jax.Array, jax.Array]:
    _, l, e = v_ble.shape
    w_le = self.param("w", nn.initializers.lecun_normal(), (l, e))
    b_l = self.param("b", nn.initializers.zeros, (l,))
    score_bl = jnp.tanh(jnp.einsum("ble,le->bl", v_ble, w_le.astype(v_ble.dtype)) + b_l)
    alpha_bl = masked_softmax(score_bl, None)
    return jnp.einsum("bl,ble->be", alpha_bl.astype(v_ble.dtype), v_ble), alpha_bl
