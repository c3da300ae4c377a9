"""The sequence layers' fast forms against the straightforward formulas, on random inputs: the same
outputs and gradients for the same parameters (same parameter trees), with the CPU chunking (rows sorted
by length, chunks cut to their histories' length) and the GRU's row groups switched on at tiny sizes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mian_jax.errors import ConfigError
from mian_jax.layers import chunks, gru, transformer
from mian_jax.layers.gru import AUGRUCell, GRUCell, MaskedRNN
from mian_jax.layers.target_attention import TargetAttention
from mian_jax.layers.transformer import Encoder
from mian_jax.layers.auxiliary import AUX_MLP, aux_pair_loss, auxiliary_loss
from mian_jax.layers.embedding import Groups
from mian_jax.layers.negatives import sample_negatives

B, T, E = 24, 16, 6
LENGTHS = np.array([16, 0, 1, 3, 5, 8, 12, 15] * 3)
MASK = jnp.asarray(np.arange(T)[None, :] < LENGTHS[:, None])


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
  """Chunks of 4 rows of 16 positions, lengths 4 / 8 / 16, GRU groups of 6 rows: every path at B = 24."""
  monkeypatch.setattr(chunks, "CHUNK_POSITIONS", 64)
  monkeypatch.setattr(chunks, "MIN_POSITIONS", 128)
  monkeypatch.setattr(chunks, "MIN_BUCKETED", 8)
  monkeypatch.setattr(gru, "ROWS_PER_GROUP", 6)


def _rand(seed, *shape):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _close(got, want, rtol=2e-5, atol=2e-5):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=rtol, atol=atol)


def _same_function(fast, reference, params, *inputs, skip=()):
  """fast and reference agree on outputs and on the gradients of a random linear function of them (with
  respect to the parameters and the float inputs); `skip`: parameter paths whose true gradient is 0
  (a bias a softmax cancels), compared in size only."""
  _close(fast(params, *inputs), reference(params, *inputs))
  out = jax.tree.leaves(reference(params, *inputs))
  weights = [_rand(50 + i, *o.shape) for i, o in enumerate(out)]
  loss = lambda f: lambda p, *x: sum(jnp.sum(o * w) for o, w in zip(jax.tree.leaves(f(p, *x)), weights))
  argnums = tuple(range(1 + len(inputs)))
  got, want = jax.grad(loss(fast), argnums)(params, *inputs), jax.grad(loss(reference), argnums)(params, *inputs)
  keep = lambda tree: jax.tree_util.tree_map_with_path(
    lambda path, x: 0.0 if any(s in jax.tree_util.keystr(path) for s in skip) else x, tree
  )
  _close(keep(got), keep(want), rtol=1e-4, atol=1e-4)


def test_in_chunks_with_lengths_equals_the_whole_batch():
  x = _rand(0, B, T, E) * MASK[..., None]
  q = _rand(1, B, E)
  fn = lambda x, m, q: jnp.where(m[..., None], jnp.tanh(x * q[:, None] + jnp.cumsum(x, 1)), 0.0)
  got = chunks.in_chunks(fn, (x, MASK), (q,), mask=MASK)
  np.testing.assert_allclose(got, fn(x, MASK, q), rtol=1e-6, atol=1e-6)
  assert chunks.chunk_count(B, T) == 6 and chunks.lengths_of(T) == [4, 8, 16]


def _reference_encoder(layers, heads, pre_ln):
  """The stack as Flax's modules compute it (query and key padding masked, softmax in float32)."""

  class Block(nn.Module):
    @nn.compact
    def __call__(self, x, mask):
      e = x.shape[-1]
      mha = nn.MultiHeadDotProductAttention(
        num_heads=heads, qkv_features=e, out_features=e, name="mha", force_fp32_for_softmax=True
      )
      ffn = nn.Sequential([nn.Dense(2 * e, name="ffn_in"), nn.relu, nn.Dense(e, name="ffn_out")])
      ln1, ln2, am = nn.LayerNorm(name="ln_attn"), nn.LayerNorm(name="ln_ffn"), nn.make_attention_mask(mask, mask)
      if pre_ln:
        h = ln1(x)
        x = x + mha(h, h, mask=am)
        x = x + ffn(ln2(x))
      else:
        x = ln1(x + mha(x, x, mask=am))
        x = ln2(x + ffn(x))
      return x * mask[..., None]

  class Stack(nn.Module):
    @nn.compact
    def __call__(self, x, mask):
      for i in range(layers):
        x = Block(name=f"block{i}")(x, mask)
      return nn.LayerNorm(name="ln_final")(x) * mask[..., None] if pre_ln else x

  return Stack()


@pytest.mark.parametrize("pre_ln,layers", [(True, 2), (False, 1)])
def test_encoder_equals_flax_attention_and_layer_norms(pre_ln, layers):
  x = _rand(2, B, T, E)
  fast, ref = Encoder(layers, 2, 2, pre_ln), _reference_encoder(layers, 2, pre_ln)
  params = fast.init(jax.random.key(0), x, MASK)["params"]
  ref_params = ref.init(jax.random.key(0), x, MASK)["params"]
  assert jax.tree.structure(params) == jax.tree.structure(ref_params)
  params = jax.tree.map(lambda p: p + 0.3 * _rand(3, *p.shape), params)  # biases and norms non-trivial too
  _same_function(
    lambda p, x: fast.apply({"params": p}, x, MASK),
    lambda p, x: ref.apply({"params": p}, x, MASK),
    params,
    x,
    skip=("['key']['bias']",),
  )


@pytest.mark.parametrize("causal", [False, True])
def test_attention_kernels_agree(causal):
  """jax.nn.dot_product_attention (xla), unpadded and with every head zero-padded to 8 wide (the cuDNN
  layout; E = 6 in 2 heads of 3), gives the einsum kernel's outputs and gradients; and so does a causal
  encoder block under each kernel."""
  q, k, v = (_rand(20 + i, B, T, 2, 3) for i in range(3))
  bias = transformer.key_bias(MASK)
  keep = MASK[:, :, None, None]  # rows with no real key (an empty history) are zeroed by the block
  ref = lambda q, k, v: transformer.scores_and_mix(q, k, v, bias, causal, "einsum") * keep
  for multiple in (1, 8):
    fast = lambda q, k, v: transformer.scores_and_mix(q, k, v, bias, causal, "xla", head_multiple=multiple) * keep
    _same_function(lambda _, *x: fast(*x), lambda _, *x: ref(*x), {}, q, k, v)
  if causal:  # the encoder block under the xla kernel (once: its cost is the eager gradient)
    x = _rand(2, B, T, E)
    einsum = Encoder(1, 2, 2, causal=True, kernel="einsum")
    params = einsum.init(jax.random.key(0), x, MASK)["params"]
    _same_function(
      lambda p, x: Encoder(1, 2, 2, causal=True, kernel="xla").apply({"params": p}, x, MASK),
      lambda p, x: einsum.apply({"params": p}, x, MASK),
      params,
      x,
    )


def test_an_unknown_or_unavailable_attention_kernel_is_refused():
  assert transformer.resolve_kernel("auto") == "einsum"  # on CPU
  with pytest.raises(ConfigError, match="ibim_attention_kernel=flash: choose auto or one of einsum, xla, cudnn"):
    transformer.resolve_kernel("flash")
  with pytest.raises(
    ConfigError, match=r"cudnn needs a GPU and train.compute_dtype=bfloat16 \(this run: cpu, bfloat16\)"
  ):
    transformer.resolve_kernel("cudnn", jnp.bfloat16)


def _reference_activation(p, q, k, mask, normalise):
  x = jnp.concatenate([jnp.broadcast_to(q[:, None], k.shape), k, q[:, None] - k, q[:, None] * k], -1)
  for i in range(2):
    x = jax.nn.sigmoid(x @ p[f"dense{i}"]["kernel"] + p[f"dense{i}"]["bias"])
  s = (x @ p["score"]["kernel"] + p["score"]["bias"])[..., 0]
  if normalise:
    w = jax.nn.softmax(jnp.where(mask, s, -1e9), -1) * mask
  else:
    w = jnp.where(mask, s, 0.0)
  return jnp.einsum("bt,bte->be", w, k), w


@pytest.mark.parametrize("normalise", [False, True])
def test_activation_unit_regrouped_first_layer_equals_the_concatenation(normalise):
  q, k = _rand(4, B, E), _rand(5, B, T, E) * MASK[..., None]
  att = TargetAttention((8, 4), normalise=normalise)
  params = att.init(jax.random.key(1), q, k, MASK)["params"]
  assert params["dense0"]["kernel"].shape == (4 * E, 8)  # the Dense on the concatenation, unchanged
  _same_function(
    lambda p, q, k: att.apply({"params": p}, q, k, MASK),
    lambda p, q, k: _reference_activation(p, q, k, MASK, normalise),
    params,
    q,
    k,
    skip=("['score']['bias']",) if normalise else (),
  )


@pytest.mark.parametrize("hoist", [False, True])
@pytest.mark.parametrize("attentional", [False, True])
def test_masked_rnn_equals_the_scan_of_cells(attentional, hoist, monkeypatch):
  monkeypatch.setattr(gru, "HOIST", hoist)  # input projections inside each step (CPU) or before the loop
  x, a = _rand(6, B, T, E), jnp.asarray(np.random.default_rng(7).uniform(size=(B, T)), jnp.float32)
  rnn = MaskedRNN(5, attentional=attentional)
  params = rnn.init(jax.random.key(2), x, MASK, a)["params"]
  assert set(params["scan"]["cell"]) == {"gates", "candidate"}
  cell = AUGRUCell(5) if attentional else GRUCell(5)

  def reference(p, x, a):
    def step(h, inputs):
      x_t, m_t, a_t = inputs
      new = cell.apply({"params": p["scan"]["cell"]}, h, x_t, *((a_t,) if attentional else ()))
      h = jnp.where(m_t[:, None], new, h)
      return h, h

    last, hs = jax.lax.scan(step, jnp.zeros((B, 5)), (x.swapaxes(0, 1), MASK.T, a.T))
    return hs.swapaxes(0, 1), last

  assert len(gru._groups(B)) == 4
  _same_function(lambda p, x, a: rnn.apply({"params": p}, x, MASK, a), reference, params, x, a)


def test_auxiliary_pair_loss_equals_the_concatenation():
  h, pos, neg = _rand(8, B, T, 5), _rand(9, B, T, E), _rand(10, B, T, E)
  widths, fan_in = (*AUX_MLP, 1), (5 + E, *AUX_MLP)
  layers = [
    {"kernel": _rand(11 + i, f, w) * 0.3, "bias": _rand(20 + i, w)} for i, (w, f) in enumerate(zip(widths, fan_in))
  ]

  def logit(layers, x):
    for p in layers[:-1]:
      x = jax.nn.sigmoid(x @ p["kernel"] + p["bias"])
    return (x @ layers[-1]["kernel"] + layers[-1]["bias"])[..., 0]

  def reference(layers, h, pos, neg):
    return -jax.nn.log_sigmoid(logit(layers, jnp.concatenate([h, pos], -1))) - jax.nn.log_sigmoid(
      -logit(layers, jnp.concatenate([h, neg], -1))
    )

  _same_function(aux_pair_loss, reference, layers, h, pos, neg)


@pytest.mark.parametrize("with_rows", [False, True])
def test_at_real_equals_the_whole_batch_at_real_positions(with_rows):
  """Packed into chunks of 64 slots (a chunk past the last real position skipped), outputs and gradients
  equal fn on the whole batch at the real positions, 0 elsewhere, whatever the padding holds."""
  x = jnp.where(MASK[..., None], _rand(0, B, T, E), 1e30)  # padding huge: it must reach nothing
  q, w = _rand(1, B, E), _rand(2, E, 3)

  def fn(x, *q):
    return jnp.tanh((x * q[0][:, None] if q else x) @ w)[..., 0]

  rows = (q,) if with_rows else ()
  whole = lambda p, x, *r: jnp.where(MASK, fn(x * p, *r), 0.0)
  fast = lambda p, x, *r: chunks.at_real(lambda x, *r: fn(x * p, *r), (x,), r, mask=MASK)
  assert B * T >= chunks.MIN_POSITIONS
  _same_function(fast, whole, jnp.float32(0.7), jnp.where(MASK[..., None], x, 0.0), *rows)
  np.testing.assert_array_equal(np.asarray(fast(jnp.float32(0.7), x, *rows))[~np.asarray(MASK)], 0.0)
  empty = jnp.zeros_like(MASK)
  assert not np.asarray(chunks.at_real(lambda x: fn(x), (x,), (), mask=empty)).any()


def test_auxiliary_loss_at_the_scored_pairs_equals_its_definition():
  """DIEN's auxiliary loss computed at the packed pairs (at_real) equals the mean of the pair loss over the
  pairs (t, t+1 real, negative valid) computed on the whole batch: value and gradients."""
  rng = np.random.default_rng(12)
  ids = jnp.asarray(np.where(np.asarray(MASK), rng.integers(1, 5, size=(B, T)), 0))
  g = Groups(
    item=_rand(13, B, E),
    behaviour=_rand(14, B, T, E) * MASK[..., None],
    mask=MASK,
    user=_rand(15, B, 1, E),
    context=_rand(16, B, 1, E),
    behaviour_ids=ids,
    linear=jnp.zeros((B, 0)),
  )
  widths, fan_in = (*AUX_MLP, 1), (5 + E, *AUX_MLP)
  layers = [
    {"kernel": _rand(21 + i, f, w) * 0.3, "bias": _rand(30 + i, w)} for i, (w, f) in enumerate(zip(widths, fan_in))
  ]
  key = jax.random.key(4)

  def reference(layers, h, beh):
    row, pos, valid = sample_negatives(key, ids, MASK)
    loss = aux_pair_loss(layers, h[:, :-1], beh[:, 1:], beh[row, pos][:, 1:])
    pair = (MASK[:, :-1] & MASK[:, 1:] & valid[:, 1:]).astype(jnp.float32)
    return jnp.sum(loss * pair) / pair.sum()

  fast = lambda layers, h, beh: auxiliary_loss(layers, h, g.replace(behaviour=beh), key)
  _same_function(fast, reference, layers, _rand(17, B, T, 5), g.behaviour)
