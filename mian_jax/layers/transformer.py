"""Transformer encoder blocks over the behaviour sequence, with padded positions masked.

Pre-LN (MIAN's IBIM): x = x + MHA(LN(x)); x = x + FFN(LN(x)).
Post-LN (the original Transformer): x = LN(x + MHA(x)); x = LN(x + FFN(x)).
Causal (either form, `causal=True`): position t attends to the real positions <= t only.
Every block's output is 0 at padding. Legend: B batch, T history length, E width, H heads, Dh = E / H.

The parameters are those of Flax's MultiHeadDotProductAttention, Dense and LayerNorm (names, shapes,
initialisers); the computation is `encode`, a function of them:
- the padding is a key bias [B, T] (0 or -1e9) built once per batch for every block and head: a padded
  position is never attended to. (Flax's [B, 1, T, T] mask also masks the padded queries, whose rows
  are zeroed at the block's end either way: the same outputs at the real positions.)
- query, key and value are one [B T, E] x [E, 3E] matmul (their kernels side by side), the softmax's
  1/sqrt(Dh) folded into the query's kernel; the softmax is computed in float32;
- the whole stack runs in cache-sized chunks of rows, recomputed in the backward pass (layers/chunks.py).
Why: on 2 CPU cores (B = 1024, T = 50, E = 36, 2 heads, FFN 72, one block and the final LayerNorm,
forward + backward) this takes 200 ms against 330 ms for Flax's modules (measured with the code of commit
3eaadd6; `benchmarks/blocks.py` times these layers).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mian_jax.errors import ConfigError
from mian_jax.layers.chunks import in_chunks
from mian_jax.layers.params import DenseParams, LayerNormParams, layer_norm

NEG = -1e9  # the key bias at padding


def key_bias(mask_bt: jax.Array) -> jax.Array:
  """0 at the real positions, NEG at padding [B, T] (float32)."""
  return jnp.where(mask_bt, 0.0, NEG).astype(jnp.float32)


def causal_bias(t: int) -> jax.Array:
  """0 where key <= query, NEG above the diagonal [T(query), T(key)] (float32)."""
  return jnp.where(jnp.arange(t)[None, :] <= jnp.arange(t)[:, None], 0.0, NEG).astype(jnp.float32)


KERNELS = ("einsum", "xla", "cudnn")


def resolve_kernel(kernel: str, dtype: Any = jnp.float32) -> str:
  """model.ibim_attention_kernel: auto = einsum on CPU, xla on GPU / TPU; cudnn needs a GPU and bf16 / fp16."""
  backend = jax.default_backend()
  if kernel == "auto":
    return "einsum" if backend == "cpu" else "xla"
  if kernel not in KERNELS:
    raise ConfigError(f"model.ibim_attention_kernel={kernel}: choose auto or one of {', '.join(KERNELS)}")
  if kernel == "cudnn" and (backend != "gpu" or jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16)):
    raise ConfigError(
      f"model.ibim_attention_kernel=cudnn needs a GPU and train.compute_dtype=bfloat16 (this run: {backend}, "
      f"{jnp.dtype(dtype).name}); set model.ibim_attention_kernel=auto"
    )
  return kernel


def scores_and_mix(
  q: jax.Array, k: jax.Array, v: jax.Array, bias_bt: jax.Array, causal: bool, kernel: str, head_multiple: int = 1
) -> jax.Array:
  """softmax(q k^T + bias) v per head for q, k, v [B, T, H, Dh] (the 1/sqrt(Dh) already in q), the scores
  and softmax in float32 -> [B, T, H, Dh]. `kernel` einsum: two einsums; xla / cudnn:
  jax.nn.dot_product_attention with that implementation. Heads are zero-padded to a multiple of
  `head_multiple` wide (8 for cudnn): zero columns add nothing to q k^T, and the output's padded columns
  (the zero columns of v mixed) are cut off, so the result is the unpadded one."""
  dh = q.shape[-1]
  if kernel == "einsum":
    s_bhqk = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) + bias_bt[:, None, None, :]
    if causal:
      s_bhqk = s_bhqk + causal_bias(q.shape[1])
    a_bhqk = jax.nn.softmax(s_bhqk, axis=-1).astype(q.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", a_bhqk, v)
  pad = (-dh) % max(head_multiple, 8 if kernel == "cudnn" else 1)
  if pad:
    q, k, v = (jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, pad))) for x in (q, k, v))
  bias = bias_bt[:, None, None, :].astype(jnp.float32 if kernel == "xla" else q.dtype)
  out = jax.nn.dot_product_attention(q, k, v, bias=bias, scale=1.0, is_causal=causal, implementation=kernel)
  return out[..., :dh]


def attention(
  p: dict[str, Any], h_bte: jax.Array, bias_bt: jax.Array, heads: int, causal: bool = False, kernel: str = "einsum"
) -> jax.Array:
  """Multi-head self-attention with Flax's MultiHeadDotProductAttention parameters `p` [B, T, E]; with
  `causal`, query t sees keys <= t only; `kernel`: `scores_and_mix`."""
  b, t, e = h_bte.shape
  dh = e // heads
  scale = np.asarray([1.0 / np.sqrt(dh), 1.0, 1.0], np.float32)
  w_qkv = jnp.concatenate([p[n]["kernel"].reshape(e, e) * s for n, s in zip(("query", "key", "value"), scale)], 1)
  b_qkv = jnp.concatenate([p[n]["bias"].reshape(e) * s for n, s in zip(("query", "key", "value"), scale)])
  qkv = h_bte @ w_qkv.astype(h_bte.dtype) + b_qkv.astype(h_bte.dtype)
  q, k, v = (x.reshape(b, t, heads, dh) for x in jnp.split(qkv, 3, axis=-1))  # its gradient: one concatenation
  o_bte = scores_and_mix(q, k, v, bias_bt, causal, kernel).reshape(b, t, e)
  return o_bte @ p["out"]["kernel"].reshape(e, e) + p["out"]["bias"]


def block(
  p: dict[str, Any],
  x_bte: jax.Array,
  bias_bt: jax.Array,
  keep_bt1: jax.Array,
  heads: int,
  pre_ln: bool,
  causal: bool = False,
  kernel: str = "einsum",
) -> jax.Array:
  """One encoder block (module docstring) with EncoderBlock's parameters `p`."""
  ffn = lambda h: (
    jax.nn.relu(h @ p["ffn_in"]["kernel"] + p["ffn_in"]["bias"]) @ p["ffn_out"]["kernel"] + p["ffn_out"]["bias"]
  )
  ln1, ln2 = (lambda h: layer_norm(h, p["ln_attn"])), (lambda h: layer_norm(h, p["ln_ffn"]))
  if pre_ln:
    x_bte = x_bte + attention(p["mha"], ln1(x_bte), bias_bt, heads, causal, kernel)
    x_bte = x_bte + ffn(ln2(x_bte))
  else:
    x_bte = ln1(x_bte + attention(p["mha"], x_bte, bias_bt, heads, causal, kernel))
    x_bte = ln2(x_bte + ffn(x_bte))
  return x_bte * keep_bt1


def encode(
  blocks: list[dict[str, Any]],
  final: dict[str, jax.Array] | None,
  x_bte: jax.Array,
  mask_bt: jax.Array,
  heads: int,
  pre_ln: bool,
  causal: bool = False,
  kernel: str = "einsum",
) -> jax.Array:
  """The encoder stack (every block, then the final LayerNorm when given), zero at padding."""
  bias_bt, keep_bt1 = key_bias(mask_bt), mask_bt[..., None].astype(x_bte.dtype)
  for p in blocks:
    x_bte = block(p, x_bte, bias_bt, keep_bt1, heads, pre_ln, causal, kernel)
  if final is not None:
    x_bte = layer_norm(x_bte, final) * keep_bt1
  return x_bte


class _AttentionParams(nn.Module):
  """MultiHeadDotProductAttention's parameters: query / key / value {kernel [E, H, Dh], bias [H, Dh]}, out
  {kernel [H, Dh, E], bias [E]}."""

  heads: int

  @nn.compact
  def __call__(self, e: int) -> dict[str, Any]:
    dh = e // self.heads
    p = {n: DenseParams((self.heads, dh), name=n)((e,)) for n in ("query", "key", "value")}
    return {**p, "out": DenseParams((e,), name="out")((self.heads, dh))}


class EncoderBlock(nn.Module):
  heads: int
  ffn_mult: int = 2
  pre_ln: bool = True

  @nn.compact
  def weights(self, e: int) -> dict[str, Any]:
    """The block's parameters (module docstring)."""
    return {
      "mha": _AttentionParams(self.heads, name="mha")(e),
      "ffn_in": DenseParams((self.ffn_mult * e,), name="ffn_in")((e,)),
      "ffn_out": DenseParams((e,), name="ffn_out")((self.ffn_mult * e,)),
      "ln_attn": LayerNormParams(name="ln_attn")(e),
      "ln_ffn": LayerNormParams(name="ln_ffn")(e),
    }

  def __call__(self, x_bte: jax.Array, mask_bt: jax.Array) -> jax.Array:
    p = jax.tree.map(lambda w: w.astype(x_bte.dtype), self.weights(x_bte.shape[-1]))
    return encode([p], None, x_bte, mask_bt, self.heads, self.pre_ln)


class Encoder(nn.Module):
  layers: int
  heads: int
  ffn_mult: int = 2
  pre_ln: bool = True
  causal: bool = False
  kernel: str = "auto"  # model.ibim_attention_kernel

  @nn.compact
  def __call__(self, x_bte: jax.Array, mask_bt: jax.Array) -> jax.Array:
    e = x_bte.shape[-1]
    blocks = [
      EncoderBlock(self.heads, self.ffn_mult, self.pre_ln, name=f"block{i}").weights(e) for i in range(self.layers)
    ]
    final = LayerNormParams(name="ln_final")(e) if self.pre_ln and self.layers else None
    blocks, final = jax.tree.map(lambda w: w.astype(x_bte.dtype), (blocks, final))
    kernel = resolve_kernel(self.kernel, x_bte.dtype)
    return in_chunks(
      lambda x, m: encode(blocks, final, x, m, self.heads, self.pre_ln, self.causal, kernel),
      (x_bte, mask_bt),
      mask=mask_bt,
    )
