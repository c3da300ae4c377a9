"""MIAN: Multi-interactive Attention Network (Zhang et al., WSDM 2021).

Legend: B batch, T history length, J user fields, K context fields, D embedding width,
Di candidate width (= behaviour width), G = gim_dim.

IBIM  h = Encoder(e_b) (Pre-LN Transformer, padding masked); V_t = [e_i; h_t] [B, T, 2Di];
      alpha_t = softmax_t(tanh(V_t W + b)) (padding gets 0); R_ibim = sum_t alpha_t V_t      [B, 2Di]
IUIM  V_j = [e_i; e_u^j]; alpha_j = softmax_j(tanh(V_j W_j + b_j)), W_j per field;
      R_iuim = sum_j alpha_j V_j                                                            [B, Di+D]
ICIM  the same over the context fields                                                      [B, Di+D]
GIM   r = [e_i; e_c; e_b; e_u; R_ibim; R_iuim; R_icim] with e_b, e_u, e_c pooled first (masked mean
      over behaviours, mean over fields). The paper sums vectors of different widths; here every r_l
      is projected to width G by its own linear map P_l, scored on r_l with its own (W_l, b_l):
      R_g = sum_l softmax_l(tanh(r_l W_l + b_l)) (r_l P_l + c_l)                            [B, G]
MLP   on R_g -> click logit [B]. With mlp_on_concat (default) the MLP reads [R_g; r] with e_u and e_c
      unpooled (every field's vector), the paper's "as an option, on r concatenated".

Ablations switch modules off: without IBIM / IUIM / ICIM their R leaves r; without GIM, r is
concatenated and fed to the MLP.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mian_jax.config import ModelConfig
from mian_jax.layers.attention import AdditivePool, FieldwiseAdditivePool
from mian_jax.layers.embedding import Groups
from mian_jax.layers.mlp import MLP
from mian_jax.layers.transformer import Encoder


def _broadcast_concat(e_bi: jax.Array, x_ble: jax.Array) -> jax.Array:
  """[e_i; x_l] for every position l: [B, Di] x [B, L, E] -> [B, L, Di+E]."""
  return jnp.concatenate([jnp.broadcast_to(e_bi[:, None, :], x_ble.shape[:2] + e_bi.shape[-1:]), x_ble], axis=-1)


GIM_INPUTS = ("e_i", "e_b", "e_c", "e_u", "R_ibim", "R_iuim", "R_icim")  # the order of extras["gim"]'s columns


class MIAN(nn.Module):
  cfg: ModelConfig
  use_ibim: bool = True
  use_iuim: bool = True
  use_icim: bool = True
  use_gim: bool = True

  @nn.compact
  def __call__(self, g: Groups, train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Returns (logit [B], attention weights by module) for the embedded groups `g`."""
    cfg = self.cfg
    mask_bt = g.mask
    e_bi = g.item
    attn: dict[str, jax.Array] = {}
    count_bt = jnp.maximum(mask_bt.sum(1, keepdims=True), 1)
    r = {"e_i": e_bi, "e_b": g.behaviour.sum(1) / count_bt}
    if g.context.shape[1]:
      r["e_c"] = g.context.mean(1)
    if g.user.shape[1]:
      r["e_u"] = g.user.mean(1)
    if self.use_ibim:
      h_bte = g.behaviour
      if cfg.ibim_encoder != "none":
        h_bte = Encoder(cfg.ibim_layers, cfg.ibim_heads, cfg.ibim_ffn_mult, cfg.ibim_encoder == "pre_ln",
                        name="ibim_encoder")(h_bte, mask_bt)
      r["R_ibim"], attn["ibim"] = AdditivePool(name="ibim_pool")(_broadcast_concat(e_bi, h_bte), mask_bt)
    if self.use_iuim and g.user.shape[1]:
      r["R_iuim"], attn["iuim"] = FieldwiseAdditivePool(name="iuim")(_broadcast_concat(e_bi, g.user))
    if self.use_icim and g.context.shape[1]:
      r["R_icim"], attn["icim"] = FieldwiseAdditivePool(name="icim")(_broadcast_concat(e_bi, g.context))
    if self.use_gim:
      names = list(r)
      p_blg = jnp.stack([nn.Dense(cfg.gim_dim, name=f"gim_proj_{n}")(r[n]) for n in names], axis=1)
      s_bl = jnp.tanh(jnp.stack([nn.Dense(1, name=f"gim_score_{n}")(r[n])[:, 0] for n in names], axis=1))
      alpha_bl = jax.nn.softmax(s_bl.astype(jnp.float32), axis=-1)
      attn["gim"] = alpha_bl
      r_g = jnp.einsum("bl,blg->bg", alpha_bl.astype(p_blg.dtype), p_blg)
      x = r_g
      if cfg.mlp_on_concat:  # every user / context field on its own, not pooled, so the MLP sees each
        flat = [g.user.reshape(g.user.shape[0], -1), g.context.reshape(g.context.shape[0], -1)]
        x = jnp.concatenate([r_g] + [r[n] for n in names if n not in ("e_u", "e_c")] + flat, axis=-1)
    else:
      x = jnp.concatenate(list(r.values()), axis=-1)
    return MLP(cfg.mlp, cfg.dropout, name="mlp")(x, train), attn
