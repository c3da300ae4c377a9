"""DIEN: Deep Interest Evolution Network (Zhou et al., AAAI 2019), as its reference code
(github.com/mouna99/dien, Model_DIN_V2_Gru_Vec_attGru_Neg).

Legend: B batch, T history length, J user fields, K context fields, Di item (= behaviour) width,
H = cfg.gru_dim or Di (the reference: 36 = 2 x 18 = Di).

Interest extractor  h_t = GRU(e_b^t, h_{t-1}) over the real behaviours (state kept at padding)   [B, T, H]
Auxiliary loss      for t = 0..T-2 with t+1 real: p(h_t, e) = sigmoid(Aux([h_t; e])), Aux = Dense 100
                    -> sigmoid -> Dense 50 -> sigmoid -> Dense 1 (the reference's auxiliary_net);
                    L_aux = mean over pairs whose negative is valid of
                            -log p(h_t, e_b^{t+1}) - log(1 - p(h_t, e_neg^{t+1}))
                    e_neg = another behaviour of the batch with another id (layers/negatives.py);
                    computed in training only (needs the "negatives" rng).
Interest evolving   a_t = softmax_t over real t of ActUnit(PReLU(Dense_H(e_i)), h_t)  (din_fcn_attention)
                    h'_t = AUGRU(h_t, h'_{t-1}, a_t); h'_T the state at the last real behaviour   [B, H]
x                   = [e_i; h'_T; s; e_i * s; e_u (every field); e_c (every field)], s = sum_t e_b^t
logit               = DiceMLP(cfg.mlp)(x)
extras              = {"aux_loss": L_aux (training), "attention": a [B, T]}

Its parts, taken away one at a time (registry entries, for the diagnosis of what DIEN gains over DIN;
`model.aux_loss_weight=0` takes away the auxiliary loss):
dien_no_product     x without e_i * s
dien_state_only     x without s and e_i * s: [e_i; h'_T; e_u; e_c]
dien_gru_attention  no AUGRU: h'_T is replaced by sum_t a_t h_t (the same attention a, pooling the
                    extractor's states as DIN pools behaviours; normalised, as DIEN's a is)
dien_no_extractor   no extractor GRU (and so no auxiliary loss): a and the AUGRU run over e_b itself (H = Di)
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mian_jax.config import ModelConfig
from mian_jax.layers.chunks import in_chunks
from mian_jax.layers.dice import DiceMLP
from mian_jax.layers.embedding import Groups
from mian_jax.layers.gru import MaskedRNN
from mian_jax.layers.negatives import sample_negatives
from mian_jax.layers.params import DenseParams
from mian_jax.layers.target_attention import TargetAttention

AUX_MLP = (100, 50)  # the reference's auxiliary_net


class AuxNet(nn.Module):
  """[h_t; e] [..., H + Di] -> click logit [...] (sigmoid hidden layers): the parameters of Dense 100, 50, 1
  (dense0, dense1, logit)."""

  @nn.compact
  def weights(self, h: int, di: int) -> list[dict[str, jax.Array]]:
    widths = (*AUX_MLP, 1)
    return [DenseParams((w,), name=n)((f,)) for n, w, f in zip(("dense0", "dense1", "logit"), widths,
                                                                  (h + di, *AUX_MLP))]


def aux_pair_loss(layers: list[dict[str, jax.Array]], h_bsh: jax.Array, pos_bsd: jax.Array,
                  neg_bsd: jax.Array) -> jax.Array:
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
  row_bt, pos_bt, valid_bt = sample_negatives(key, g.behaviour_ids, g.mask)
  neg_btd = g.behaviour[row_bt, pos_bt]
  # s = t, paired with behaviour t + 1; computed in chunks as long as their histories (layers/chunks.py)
  loss_bs = in_chunks(lambda h, pos, neg, m: aux_pair_loss(layers, h, pos, neg),
                      (h_bth[:, :-1], g.behaviour[:, 1:], neg_btd[:, 1:], g.mask[:, 1:]), mask=g.mask[:, 1:])
  pair_bs = (g.mask[:, :-1] & g.mask[:, 1:] & valid_bt[:, 1:]).astype(jnp.float32)
  return jnp.sum(loss_bs * pair_bs) / jnp.maximum(pair_bs.sum(), 1.0)


class DIEN(nn.Module):
  cfg: ModelConfig
  use_extractor: bool = True
  evolution: str = "augru"  # augru | attention_pool
  history_sum: str = "sum_product"  # what x holds of s: sum_product | sum | none

  @nn.compact
  def __call__(self, g: Groups, train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    cfg = self.cfg
    b = g.item.shape[0]
    extras: dict[str, jax.Array] = {}
    if self.use_extractor:
      hidden = cfg.gru_dim or g.behaviour.shape[-1]
      h_bth, _ = MaskedRNN(hidden, name="extractor")(g.behaviour, g.mask)
      aux = AuxNet(name="aux_net").weights(hidden, g.behaviour.shape[-1])  # declared in eval mode too
      if train:
        aux = jax.tree.map(lambda p: p.astype(h_bth.dtype), aux)
        extras["aux_loss"] = auxiliary_loss(aux, h_bth, g, self.make_rng("negatives"))
    else:
      hidden, h_bth = g.behaviour.shape[-1], g.behaviour
    _, a_bt = TargetAttention(cfg.attention_mlp, normalise=True, project_query=True, name="attention")(
        g.item, h_bth, g.mask)
    extras["attention"] = a_bt
    if self.evolution == "augru":
      _, final_bh = MaskedRNN(hidden, attentional=True, name="evolution")(h_bth, g.mask, a_bt.astype(h_bth.dtype))
    else:
      final_bh = jnp.einsum("bt,bth->bh", a_bt.astype(h_bth.dtype), h_bth)
    sum_bi = g.behaviour.sum(1)  # padding is 0 already (the reference's item_his_eb_sum)
    history = {"sum_product": [sum_bi, g.item * sum_bi], "sum": [sum_bi], "none": []}[self.history_sum]
    x = jnp.concatenate([g.item, final_bh, *history, g.user.reshape(b, -1), g.context.reshape(b, -1)], axis=-1)
    return DiceMLP(cfg.mlp, cfg.dropout, name="mlp")(x, train), extras
