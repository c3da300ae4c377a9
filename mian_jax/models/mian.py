"""MIAN: Multi-interactive Attention Network (Zhang et al., WSDM 2021).

Legend: B batch, T history length, J user fields, K context fields, D embedding width,
Di candidate width (= behaviour width), G = gim_dim.

IBIM  x_t = e_b^t + P(rank_t) at real positions, rank_t = n - 1 - t for a history of n behaviours
      (0 = the most recent; model.ibim_position: none | learned table [256, Di] (ranks >= 255 share
      its last row) | sinusoidal);
      h = Encoder(x) (model.ibim_encoder: pre_ln = Pre-LN Transformer, the paper's; post_ln; causal =
        Pre-LN with position t attending to t' <= t only; gru = DIEN's GRU, state width Di, run over the
        real behaviours; gru_pre_ln = that GRU, then the Pre-LN Transformer over its states; none: h = x;
        padding masked throughout); V_t = [e_i; h_t] [B, T, 2Di];
      with model.ibim_candidate_token, x gets e_i appended as token T+1 (after the padding: masked
        positions are skipped by every encoder, so it follows the last real behaviour; no position
        added); h_cand = its output [B, Di] joins r; the pooling below still runs over the T behaviours;
      with model.ibim_last_state, h_last = h at the last real behaviour (0 for an empty history) [B, Di]
        joins r (DIEN's "current interest": the GRU's final state);
      with model.ibim_aux_loss, DIEN's auxiliary loss (layers/auxiliary.py) on the states a_t that have read
        behaviours <= t only (gru, causal: h_t; gru_pre_ln: the GRU's states, before the Transformer):
        a_t scores e_b^{t+1} against another behaviour of the batch; extras["aux_loss"] in training,
        added to the click loss times model.aux_loss_weight (as DIEN's);
      alpha_t = softmax_t(s_t) over the real positions (padding gets 0; with model.ibim_sink over one more,
        empty position of learned logit b: alpha_t = exp(s_t) / (exp(b) + sum_t' exp(s_t')), which may sum
        to less than 1), with (model.ibim_attention)
        additive  s_t = tanh(V_t W + b)                                (the paper's formula)
        target    s_t = ActUnit([e_i, h_t, e_i - h_t, e_i * h_t])      (DIN's activation unit, sigmoid
                  hidden layers model.attention_mlp: the slides' "just like DIN or DIEN")
      R_ibim = sum_t alpha_t V_t                                                             [B, 2Di]
IUIM  V_j = [e_i; e_u^j]; alpha_j = softmax_j(tanh(V_j W_j + b_j)), W_j per field;
      R_iuim = sum_j alpha_j V_j                                                            [B, Di+D]
ICIM  the same over the context fields                                                      [B, Di+D]
PROD  model.candidate_product: history adds p_ib = e_i * sum_t e_b^t [B, Di] (the summed history, as DIEN's
      and DIN's MLP input, whatever behaviour_pool); fields adds, beside it, p_iu = (e_i A_u) * u and
      p_ic = (e_i A_c) * c [B, D], u = sum_j alpha_j e_u^j and c the pooled fields of IUIM / ICIM (their
      R's second half), A_u, A_c [Di, D] linear maps (no bias) to the field width.
GIM   r = [e_i; e_c; e_b; e_u; R_ibim; R_iuim; R_icim] with e_b, e_u, e_c pooled first (masked mean
      over behaviours, or their sum with model.behaviour_pool=sum; mean over fields), then the options'
      h_last, h_cand, p_ib, p_iu, p_ic; inputs the data lacks (no user / context fields) are left out.
      The paper sums vectors of different widths; here every r_l is projected to width G by its own
      linear map P_l, scored on r_l with its own (W_l, b_l):
      R_g = sum_l softmax_l(tanh(r_l W_l + b_l)) (r_l P_l + c_l)                            [B, G]
MLP   on R_g -> click logit [B] (ReLU hidden layers, or DIN's Dice with model.mlp_activation=dice). With mlp_on_concat (default) the MLP reads [R_g; r] with e_u and e_c
      unpooled (every field's vector), the paper's "as an option, on r concatenated".

Ablations switch modules off, and the MLP input is MIAN's minus exactly that module's output: without
IBIM / IUIM / ICIM their R leaves r (and the MLP input); without GIM, R_g leaves the MLP input (which
then reads [r; e_u; e_c] with e_u and e_c unpooled, as MIAN's does). The pieces of the MLP input are
recorded in order under the `intermediates` collection as `mlp_input` (their names: `mlp_input_names`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mian_jax.config import ModelConfig
from mian_jax.layers.attention import AdditivePool, FieldwiseAdditivePool
from mian_jax.layers.auxiliary import AuxNet, auxiliary_loss
from mian_jax.layers.chunks import last_real
from mian_jax.layers.embedding import Groups
from mian_jax.layers.dice import DiceMLP
from mian_jax.layers.gru import MaskedRNN
from mian_jax.layers.mlp import MLP
from mian_jax.layers.target_attention import TargetAttention
from mian_jax.layers.transformer import Encoder


def _broadcast_concat(e_bi: jax.Array, x_ble: jax.Array) -> jax.Array:
  """[e_i; x_l] for every position l: [B, Di] x [B, L, E] -> [B, L, Di+E]."""
  return jnp.concatenate([jnp.broadcast_to(e_bi[:, None, :], x_ble.shape[:2] + e_bi.shape[-1:]), x_ble], axis=-1)


GIM_INPUTS = ("e_i", "e_b", "e_c", "e_u", "R_ibim", "R_iuim", "R_icim")  # the paper's, in extras["gim"]'s order
OPTION_INPUTS = ("h_last", "h_cand", "p_ib", "p_iu", "p_ic")  # the options' (see the docstring), after them
FIGURE6_ORDER = ("e_c", "R_icim", "e_u", "R_iuim", "e_i", "R_ibim", "e_b")  # the paper's Figure 6 columns


def gim_inputs(model: "MIAN", user_fields: int, context_fields: int) -> tuple[str, ...]:
  """The columns of extras["gim"] for data with that many user / context fields (GIM_INPUTS' order, then
  OPTION_INPUTS', without what the data or the model lacks)."""
  cfg, ibim = model.cfg, model.use_ibim
  iuim, icim = model.use_iuim and user_fields > 0, model.use_icim and context_fields > 0
  fields = cfg.candidate_product == "fields"
  present = {
    "e_i": True,
    "e_b": True,
    "e_c": context_fields > 0,
    "e_u": user_fields > 0,
    "R_ibim": ibim,
    "R_iuim": iuim,
    "R_icim": icim,
    "h_last": ibim and cfg.ibim_last_state,
    "h_cand": ibim and cfg.ibim_candidate_token,
    "p_ib": cfg.candidate_product != "none",
    "p_iu": fields and iuim,
    "p_ic": fields and icim,
  }
  return tuple(n for n in GIM_INPUTS + OPTION_INPUTS if present[n])


def state_at_last(h_bte: jax.Array, mask_bt: jax.Array) -> jax.Array:
  """h at each row's last real position, 0 for a row without one [B, E]."""
  n_b = last_real(mask_bt)
  h_be = jnp.take_along_axis(h_bte, jnp.maximum(n_b - 1, 0)[:, None, None], axis=1)[:, 0]
  return jnp.where((n_b > 0)[:, None], h_be, 0.0).astype(h_bte.dtype)


def recency_rank(mask_bt: jax.Array) -> jax.Array:
  """rank_t = n - 1 - t at the real positions (0 = the most recent behaviour), 0 at padding [B, T]."""
  n_b1 = mask_bt.sum(1, keepdims=True)
  return jnp.where(mask_bt, n_b1 - 1 - jnp.arange(mask_bt.shape[1])[None, :], 0)


def sinusoid(rank_bt: jax.Array, width: int) -> jax.Array:
  """The Transformer's fixed encoding of a position: sin / cos of rank / 10000^(2i/width) [B, T, width]."""
  half = (width + 1) // 2
  freq = 1.0 / (10000.0 ** (jnp.arange(half, dtype=jnp.float32) * 2.0 / width))
  angle = rank_bt[..., None].astype(jnp.float32) * freq
  return jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=-1)[..., :width]


MAX_RANK = 255  # the learned table's last row: behaviours of rank >= 255 share it


class RecencyPosition(nn.Module):
  """P(rank_t) [B, T, E] for the real positions (0 at padding): a learned table [MAX_RANK + 1, E] or the
  sinusoid."""

  kind: str  # learned | sinusoidal

  @nn.compact
  def __call__(self, mask_bt: jax.Array, width: int) -> jax.Array:
    rank_bt = recency_rank(mask_bt)
    if self.kind == "learned":  # a fixed number of rows, so the parameters do not depend on data.max_len
      table = self.param("table", nn.initializers.normal(0.05), (MAX_RANK + 1, width))
      pos = jnp.take(table, jnp.minimum(rank_bt, MAX_RANK), axis=0)
    else:
      pos = sinusoid(rank_bt, width)
    return jnp.where(mask_bt[..., None], pos, 0.0)


class MIAN(nn.Module):
  cfg: ModelConfig
  use_ibim: bool = True
  use_iuim: bool = True
  use_icim: bool = True
  use_gim: bool = True

  @nn.compact
  def __call__(self, g: Groups, train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Returns (logit [B], extras) for the embedded groups `g`: the attention weights by module, and in
    training with model.ibim_aux_loss the auxiliary loss `aux_loss`."""
    cfg = self.cfg
    mask_bt = g.mask
    e_bi = g.item
    attn: dict[str, jax.Array] = {}
    count_b1 = jnp.maximum(mask_bt.sum(1, keepdims=True), 1) if cfg.behaviour_pool == "mean" else 1
    r = {"e_i": e_bi, "e_b": g.behaviour.sum(1) / count_b1}
    if g.context.shape[1]:
      r["e_c"] = g.context.mean(1)
    if g.user.shape[1]:
      r["e_u"] = g.user.mean(1)
    states: dict[str, jax.Array] = {}
    if self.use_ibim:
      r["R_ibim"], attn["ibim"], states, a_bti = self.ibim(e_bi, g.behaviour, mask_bt)
      if cfg.ibim_aux_loss:
        aux = AuxNet(name="ibim_aux_net").weights(a_bti.shape[-1], g.behaviour.shape[-1])  # in eval mode too
        if train:
          aux = jax.tree.map(lambda p: p.astype(a_bti.dtype), aux)
          attn["aux_loss"] = auxiliary_loss(aux, a_bti, g, self.make_rng("negatives"))
    if self.use_iuim and g.user.shape[1]:
      r["R_iuim"], attn["iuim"] = FieldwiseAdditivePool(name="iuim")(_broadcast_concat(e_bi, g.user))
    if self.use_icim and g.context.shape[1]:
      r["R_icim"], attn["icim"] = FieldwiseAdditivePool(name="icim")(_broadcast_concat(e_bi, g.context))
    r.update(states)
    if cfg.candidate_product != "none":
      r["p_ib"] = e_bi * g.behaviour.sum(1)  # padding is 0 already
    if cfg.candidate_product == "fields":
      di = e_bi.shape[-1]
      for pooled, name in (("R_iuim", "p_iu"), ("R_icim", "p_ic")):
        if pooled in r:
          field_bd = r[pooled][:, di:]
          r[name] = nn.Dense(field_bd.shape[-1], use_bias=False, name=f"product_{name}")(e_bi) * field_bd
    # The MLP input: [R_g;] then r with e_u / e_c unpooled (every field) when mlp_on_concat or without GIM.
    pieces: list[tuple[str, jax.Array]] = []
    if self.use_gim:
      names = list(r)
      p_blg = jnp.stack([nn.Dense(cfg.gim_dim, name=f"gim_proj_{n}")(r[n]) for n in names], axis=1)
      s_bl = jnp.tanh(jnp.stack([nn.Dense(1, name=f"gim_score_{n}")(r[n])[:, 0] for n in names], axis=1))
      alpha_bl = jax.nn.softmax(s_bl.astype(jnp.float32), axis=-1)
      attn["gim"] = alpha_bl
      pieces.append(("R_g", jnp.einsum("bl,blg->bg", alpha_bl.astype(p_blg.dtype), p_blg)))
    if cfg.mlp_on_concat or not self.use_gim:
      b = e_bi.shape[0]
      pieces += [(n, v) for n, v in r.items() if n not in ("e_u", "e_c")]
      pieces += [(n, x.reshape(b, -1)) for n, x in (("e_u", g.user), ("e_c", g.context)) if x.shape[1]]
    self.sow(
      "intermediates", "mlp_input_names", tuple(n for n, _ in pieces), init_fn=tuple, reduce_fn=lambda _, names: names
    )
    x = jnp.concatenate([v for _, v in pieces], axis=-1)
    self.sow("intermediates", "mlp_input", x)
    tower = DiceMLP if cfg.mlp_activation == "dice" else MLP
    return tower(cfg.mlp, cfg.dropout, name="mlp")(x, train), attn

  def ibim(
    self, e_bi: jax.Array, e_bti: jax.Array, mask_bt: jax.Array
  ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array], jax.Array]:
    """(R_ibim [B, 2Di], alpha [B, T], {h_last, h_cand} as the options ask [B, Di], the states a_t the
    auxiliary loss reads [B, T, Di]) from the candidate and the behaviours (see the module docstring)."""
    cfg = self.cfg
    t = e_bti.shape[1]
    h_bte = e_bti
    if cfg.ibim_position != "none":
      h_bte = h_bte + RecencyPosition(cfg.ibim_position, name="ibim_position")(mask_bt, h_bte.shape[-1]).astype(
        h_bte.dtype
      )
    seq_mask_bt = mask_bt
    if cfg.ibim_candidate_token:
      h_bte = jnp.concatenate([h_bte, e_bi[:, None, :].astype(h_bte.dtype)], axis=1)
      seq_mask_bt = jnp.concatenate([mask_bt, jnp.ones_like(mask_bt[:, :1])], axis=1)
    h_bte, a_bte = self.encode(h_bte, seq_mask_bt)
    a_bte = a_bte[:, :t]
    states = {}
    if cfg.ibim_last_state:
      states["h_last"] = state_at_last(h_bte[:, :t], mask_bt)
    if cfg.ibim_candidate_token:
      states["h_cand"] = h_bte[:, t]
    h_bte = h_bte[:, :t]
    v_bte = _broadcast_concat(e_bi, h_bte)
    if cfg.ibim_attention == "additive":
      return *AdditivePool(sink=cfg.ibim_sink, name="ibim_pool")(v_bte, mask_bt), states, a_bte
    _, alpha_bt = TargetAttention(cfg.attention_mlp, normalise=True, sink=cfg.ibim_sink, name="ibim_target")(
      e_bi, h_bte, mask_bt
    )
    return jnp.einsum("bt,bte->be", alpha_bt.astype(v_bte.dtype), v_bte), alpha_bt, states, a_bte

  def encode(self, x_bte: jax.Array, mask_bt: jax.Array) -> tuple[jax.Array, jax.Array]:
    """IBIM's encoder (model.ibim_encoder) over the sequence [B, T, Di] -> (h [B, T, Di], the states a that
    have read positions <= t only [B, T, Di]: the GRU's for gru / gru_pre_ln, h otherwise)."""
    cfg, kind = self.cfg, self.cfg.ibim_encoder
    if kind in ("gru", "gru_pre_ln"):
      x_bte, _ = MaskedRNN(x_bte.shape[-1], name="ibim_gru")(x_bte, mask_bt)
    gru_bte = x_bte
    if kind in ("pre_ln", "post_ln", "causal", "gru_pre_ln"):
      x_bte = Encoder(
        cfg.ibim_layers,
        cfg.ibim_heads,
        cfg.ibim_ffn_mult,
        kind != "post_ln",
        causal=kind == "causal",
        kernel=cfg.ibim_attention_kernel,
        name="ibim_encoder",
      )(x_bte, mask_bt)
    return x_bte, (gru_bte if kind == "gru_pre_ln" else x_bte)
