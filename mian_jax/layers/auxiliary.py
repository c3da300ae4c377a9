"""DIEN's auxiliary loss (its reference code's `auxiliary_net`), shared by DIEN's interest extractor and MIAN's
IBIM encoder (model.ibim_aux_loss).

Legend: B batch, T history length, S = T - 1 scored positions, H state width, Di behaviour width.

For t = 0..T-2 with t and t+1 real: p(h_t, e) = sigmoid(Aux([h_t; e])), Aux = Dense 100 -> sigmoid ->
Dense 50 -> sigmoid -> Dense 1;
L_aux = mean over the pairs whose negative is valid of -log p(h_t, e_b^{t+1}) - log(1 - p(h_t, e_neg^{t+1})),
e_neg = another behaviour of the batch with another id (layers/negatives.py).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mian_jax.layers.chunks import at_real
from mian_jax.layers.embedding import Groups
from mian_jax.layers.negatives import sample_negatives
from mian_jax.layers.params import DenseParams

AUX_MLP = (100, 50)  # the reference's auxiliary_net


class AuxNet(nn.Module):
  """[h_t; e] [..., H + Di] -> click logit [...] (sigmoid hidden layers): the parameters of Dense 100, 50, 1
  (dense0, dense1, logit)."""

  @nn.compact
  def weights(self, h: int, di: int) -> list[dict[str, jax.Array]]:
    widths = (*AUX_MLP, 1)
    return [
      DenseParams((w,), name=n)((f,)) for n, w, f in zip(("dense0", "dense1", "logit"), widths, (h + di, *AUX_MLP))
    ]


def aux_pair_loss(
  layers: list[dict[str, jax.Array]], h_bsh: jax.Array, pos_bsd: jax.Array, neg_bsd: jax.Array
) -> jax.Array:
  """-log p(h_s, e_pos) - log(1 - p(h_s, e_neg)) [B, S]. The first layer on [h; e] is h W_h + e W_e: the
  state's part once for the positive and the negative; the two then run as one stacked batch."""
  w_h, w_e = jnp.split(layers[0]["kernel"], [h_bsh.shape[-1]], axis=0)
  z_bsa = h_bsh @ w_h + layers[0]["bias"]
  x = jnp.stack([z_bsa + pos_bsd @ w_e, z_bsa + neg_bsd @ w_e])  # [2, B, S, 100]
  for p in layers[1:]:
    x = jax.nn.sigmoid(x) @ p["kernel"] + p["bias"]
  logit = x[..., 0].astype(jnp.float32)
  return -jax.nn.log_sigmoid(logit[0]) - jax.nn.log_sigmoid(-logit[1])


def auxiliary_loss(layers: list[dict[str, jax.Array]], h_bth: jax.Array, g: Groups, key: jax.Array) -> jax.Array:
  """L_aux (above) of the states h [B, T, H] against the batch's behaviours, negatives drawn with `key`."""
  row_bt, pos_bt, valid_bt = sample_negatives(key, g.behaviour_ids, g.mask)
  neg_btd = g.behaviour[row_bt, pos_bt]
  # s = t, paired with behaviour t + 1; computed at the scored pairs only (layers/chunks.py: at_real)
  pair_bs = g.mask[:, :-1] & g.mask[:, 1:] & valid_bt[:, 1:]
  loss_bs = at_real(
    lambda h, pos, neg: aux_pair_loss(layers, h, pos, neg),
    (h_bth[:, :-1], g.behaviour[:, 1:], neg_btd[:, 1:]),
    mask=pair_bs,
  )
  pair_bs = pair_bs.astype(jnp.float32)
  return jnp.sum(loss_bs * pair_bs) / jnp.maximum(pair_bs.sum(), 1.0)
