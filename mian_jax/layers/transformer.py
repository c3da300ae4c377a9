"""Transformer encoder blocks over the behaviour sequence, with padded positions masked.

Pre-LN (MIAN's IBIM): x = x + MHA(LN(x)); x = x + FFN(LN(x)).
Post-LN (the original Transformer): x = LN(x + MHA(x)); x = LN(x + FFN(x)).
Legend: B batch, T history length, E width.
"""

from __future__ import annotations

import flax.linen as nn
import jax


class EncoderBlock(nn.Module):
  heads: int
  ffn_mult: int = 2
  pre_ln: bool = True

  @nn.compact
  def __call__(self, x_bte: jax.Array, mask_bt: jax.Array) -> jax.Array:
    e = x_bte.shape[-1]
    attn_mask = nn.make_attention_mask(mask_bt, mask_bt)  # [B, 1, T, T]
    mha = nn.MultiHeadDotProductAttention(num_heads=self.heads, qkv_features=e, out_features=e, name="mha",
                                          force_fp32_for_softmax=True)
    ffn = nn.Sequential([nn.Dense(self.ffn_mult * e, name="ffn_in"), nn.relu, nn.Dense(e, name="ffn_out")])
    ln1, ln2 = nn.LayerNorm(name="ln_attn"), nn.LayerNorm(name="ln_ffn")
    if self.pre_ln:
      h = ln1(x_bte)
      x_bte = x_bte + mha(h, h, mask=attn_mask)
      x_bte = x_bte + ffn(ln2(x_bte))
    else:
      x_bte = ln1(x_bte + mha(x_bte, x_bte, mask=attn_mask))
      x_bte = ln2(x_bte + ffn(x_bte))
    return x_bte * mask_bt[..., None]


class Encoder(nn.Module):
  layers: int
  heads: int
  ffn_mult: int = 2
  pre_ln: bool = True

  @nn.compact
  def __call__(self, x_bte: jax.Array, mask_bt: jax.Array) -> jax.Array:
    for i in range(self.layers):
      x_bte = EncoderBlock(self.heads, self.ffn_mult, self.pre_ln, name=f"block{i}")(x_bte, mask_bt)
    if self.pre_ln and self.layers:
      x_bte = nn.LayerNorm(name="ln_final")(x_bte) * mask_bt[..., None]
    return x_bte
