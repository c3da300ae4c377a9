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
from mian_jax.layers.auxiliary import AuxNet, auxiliary_loss
from mian_jax.layers.dice import DiceMLP
from mian_jax.layers.embedding import Groups
from mian_jax.layers.gru import MaskedRNN
from mian_jax.layers.target_attention import TargetAttention


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
      g.item, h_bth, g.mask
    )
    extras["attention"] = a_bt
    if self.evolution == "augru":
      _, final_bh = MaskedRNN(hidden, attentional=True, name="evolution")(h_bth, g.mask, a_bt.astype(h_bth.dtype))
    else:
      final_bh = jnp.einsum("bt,bth->bh", a_bt.astype(h_bth.dtype), h_bth)
    sum_bi = g.behaviour.sum(1)  # padding is 0 already (the reference's item_his_eb_sum)
    history = {"sum_product": [sum_bi, g.item * sum_bi], "sum": [sum_bi], "none": []}[self.history_sum]
    x = jnp.concatenate([g.item, final_bh, *history, g.user.reshape(b, -1), g.context.reshape(b, -1)], axis=-1)
    return DiceMLP(cfg.mlp, cfg.dropout, name="mlp")(x, train), extras
