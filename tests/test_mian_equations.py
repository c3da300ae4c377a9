"""MIAN as a whole against numpy computations of its docstring's formulas (mian_jax/models/mian.py), on a
tiny batch with hand-set weights: IBIM (recency position, encoder, [e_i; h_t] pooled additively or by the
activation unit, with or without the softmax's null position), GIM (weights and R_g), the Pre-LN and Post-LN blocks, and the MLP input of every
ablation (MIAN's minus exactly the removed module's output); the sequential IBIM options (causal, GRU and
GRU + Pre-LN encoders, the last state, the candidate token, DIEN's auxiliary loss on the encoder's states)
and the candidate products, each with its shapes and one hand-computed case."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mian_jax import models
from mian_jax.config import ModelConfig
from mian_jax.layers.attention import masked_softmax
from mian_jax.layers.embedding import Groups
from mian_jax.layers.transformer import EncoderBlock
from mian_jax.models.mian import GIM_INPUTS, MAX_RANK, gim_inputs

B, T, D, J, K, HEADS = 4, 5, 3, 2, 3, 2
# The options these formulas start from (a test names what it changes): the paper's Pre-LN IBIM, no product.
PAPER_IBIM = {"ibim_encoder": "pre_ln", "ibim_aux_loss": False, "candidate_product": "none"}
DI = 2 * D  # two item fields
LENGTHS = np.array([5, 2, 0, 3])
MASK = np.arange(T)[None, :] < LENGTHS[:, None]


def _groups(seed=0, user=J, context=K) -> Groups:
  rng = np.random.default_rng(seed)
  f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
  return Groups(
    item=f(B, DI),
    behaviour=f(B, T, DI) * MASK[..., None],
    mask=jnp.asarray(MASK),
    user=f(B, user, D),
    context=f(B, context, D),
    behaviour_ids=jnp.zeros((B, T), jnp.int32),
    linear=jnp.zeros((B, 0)),
  )


def _hand_set(params, seed=1):
  """Every weight a random value (biases and LayerNorm included, so that every term is exercised)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape) * 0.5, jnp.float32), params)


def _run(name="mian", g=None, given=None, **cfg):
  """(model, params, MLP input pieces by name, attention weights, groups); `given` params replace the
  hand-set ones where their names match."""
  g = _groups() if g is None else g
  model = models.get(
    name, ModelConfig(mlp=(7,), gim_dim=4, attention_mlp=(5,), ibim_heads=HEADS, **{**PAPER_IBIM, **cfg})
  )
  variables = model.init(jax.random.key(0), g, False)
  params = _hand_set(variables["params"])
  params = {k: (given[k] if given and k in given and k != "mlp" else v) for k, v in params.items()}
  variables = {**variables, "params": params}
  (logit, attn), inter = model.apply(variables, g, False, mutable=["intermediates"])
  names = inter["intermediates"]["mlp_input_names"]
  x = np.asarray(inter["intermediates"]["mlp_input"][0])
  widths = {
    "R_g": 4,
    "e_i": DI,
    "e_b": DI,
    "R_ibim": 2 * DI,
    "R_iuim": DI + D,
    "R_icim": DI + D,
    "e_u": g.user.shape[1] * D,
    "e_c": g.context.shape[1] * D,
    "h_last": DI,
    "h_cand": DI,
    "p_ib": DI,
    "p_iu": D,
    "p_ic": D,
  }
  pieces, at = {}, 0
  for n in names:
    pieces[n] = x[:, at : at + widths[n]]
    at += widths[n]
  assert at == x.shape[1], (names, x.shape)
  return model, jax.tree.map(np.asarray, variables["params"]), pieces, {k: np.asarray(v) for k, v in attn.items()}, g


def _layer_norm(x, p, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _softmax(s, axis=-1):
  e = np.exp(s - s.max(axis, keepdims=True))
  return e / e.sum(axis, keepdims=True)


def _block(x, mask, p, pre_ln, causal=False):
  """One encoder block in numpy: multi-head attention over the real positions (with `causal`, query t over
  keys <= t only), ReLU FFN."""

  def mha(h):
    m = p["mha"]
    q, k, v = (np.einsum("bte,ehd->bthd", h, m[n]["kernel"]) + m[n]["bias"] for n in ("query", "key", "value"))
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    allowed = mask[:, None, :, None] & mask[:, None, None, :]
    if causal:
      allowed = allowed & (np.arange(h.shape[1])[None, :] <= np.arange(h.shape[1])[:, None])
    w = _softmax(np.where(allowed, s, -1e9))
    o = np.einsum("bhqk,bkhd->bqhd", w, v)
    return np.einsum("bqhd,hde->bqe", o, m["out"]["kernel"]) + m["out"]["bias"]

  ffn = lambda h: (
    np.maximum(h @ p["ffn_in"]["kernel"] + p["ffn_in"]["bias"], 0) @ p["ffn_out"]["kernel"] + p["ffn_out"]["bias"]
  )
  if pre_ln:
    x = x + mha(_layer_norm(x, p["ln_attn"]))
    x = x + ffn(_layer_norm(x, p["ln_ffn"]))
  else:
    x = _layer_norm(x + mha(x), p["ln_attn"])
    x = _layer_norm(x + ffn(x), p["ln_ffn"])
  return x * mask[..., None]


@pytest.mark.parametrize("pre_ln", [True, False])
def test_encoder_block_matches_its_formula(pre_ln):
  x = np.random.default_rng(3).normal(size=(B, T, DI)).astype(np.float32)
  block = EncoderBlock(HEADS, 2, pre_ln)
  params = _hand_set(block.init(jax.random.key(0), jnp.asarray(x), jnp.asarray(MASK))["params"])
  got = np.asarray(block.apply({"params": params}, jnp.asarray(x), jnp.asarray(MASK)))
  want = _block(x, MASK, jax.tree.map(np.asarray, params), pre_ln)
  np.testing.assert_allclose(got[MASK], want[MASK], rtol=1e-4, atol=1e-4)
  assert np.all(got[~MASK] == 0)


def _ibim_numpy(p, g, position, attention, sink=False):
  """R_ibim and alpha from the module docstring, in numpy (one Pre-LN block, then the final LayerNorm)."""
  e_i, e_b = np.asarray(g.item), np.asarray(g.behaviour)
  rank = np.where(MASK, LENGTHS[:, None] - 1 - np.arange(T)[None, :], 0)
  x = e_b
  if position == "learned":
    x = x + np.where(MASK[..., None], p["ibim_position"]["table"][np.minimum(rank, MAX_RANK)], 0)
  elif position == "sinusoidal":
    i = np.arange((DI + 1) // 2)
    angle = rank[..., None] / 10000.0 ** (2 * i / DI)
    x = x + np.where(MASK[..., None], np.concatenate([np.sin(angle), np.cos(angle)], -1)[..., :DI], 0)
  enc = p["ibim_encoder"]
  h = _block(x, MASK, enc["block0"], True)
  h = _layer_norm(h, enc["ln_final"]) * MASK[..., None]
  v = np.concatenate([np.broadcast_to(e_i[:, None], h.shape), h], -1)  # V_t = [e_i; h_t]
  if attention == "additive":
    s = np.tanh(v @ p["ibim_pool"]["score"]["kernel"][:, 0] + p["ibim_pool"]["score"]["bias"][0])
  else:
    a = p["ibim_target"]
    q = np.broadcast_to(e_i[:, None], h.shape)
    z = np.concatenate([q, h, q - h, q * h], -1)
    z = 1 / (1 + np.exp(-(z @ a["dense0"]["kernel"] + a["dense0"]["bias"])))
    s = (z @ a["score"]["kernel"] + a["score"]["bias"])[..., 0]
  if sink:  # one more, empty position of logit b
    b = p["ibim_pool" if attention == "additive" else "ibim_target"]["sink"]
    e = np.where(MASK, np.exp(s), 0)
    alpha = e / (np.exp(b) + e.sum(-1, keepdims=True))
  else:
    alpha = np.where(MASK, _softmax(np.where(MASK, s, -1e9)), 0)
  return (alpha[..., None] * v).sum(1), alpha


@pytest.mark.parametrize("attention", ["additive", "target"])
def test_ibim_sink_is_a_softmax_over_one_more_empty_position(attention):
  _, p, pieces, attn, g = _run(ibim_attention=attention, ibim_sink=True)
  r_ibim, alpha = _ibim_numpy(p, g, "none", attention, sink=True)
  assert attn["ibim"].shape == (B, T) and pieces["R_ibim"].shape == (B, 2 * DI)
  np.testing.assert_allclose(attn["ibim"], alpha, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(pieces["R_ibim"], r_ibim, rtol=1e-4, atol=1e-4)
  total = attn["ibim"].sum(-1)
  assert np.all(total[LENGTHS > 0] < 1 - 1e-3) and total[2] == 0  # the null position keeps a share
  # By hand: scores (0, 0) over two real behaviours and b = log 2 give 1/4 each, so R = (v_0 + v_1) / 4.
  w = np.asarray(masked_softmax(jnp.zeros((1, 3)), jnp.asarray([[True, True, False]]), jnp.log(2.0)))
  np.testing.assert_allclose(w, [[0.25, 0.25, 0.0]], rtol=1e-6)


@pytest.mark.parametrize("position", ["none", "learned", "sinusoidal"])
@pytest.mark.parametrize("attention", ["additive", "target"])
def test_ibim_pools_candidate_and_encoded_behaviours(position, attention):
  _, p, pieces, attn, g = _run(ibim_position=position, ibim_attention=attention)
  r_ibim, alpha = _ibim_numpy(p, g, position, attention)
  np.testing.assert_allclose(attn["ibim"], alpha, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(pieces["R_ibim"], r_ibim, rtol=1e-4, atol=1e-4)
  assert np.all(attn["ibim"][2] == 0) and np.all(pieces["R_ibim"][2] == 0)  # an empty history adds nothing
  if position != "none":  # the position reaches the output: the same behaviours in another order differ
    swapped = g.replace(behaviour=g.behaviour.at[0].set(g.behaviour[0, ::-1]))
    _, _, other, _, _ = _run(g=swapped, ibim_position=position, ibim_attention=attention)
    assert not np.allclose(other["R_ibim"][0], pieces["R_ibim"][0], atol=1e-4)


@pytest.mark.parametrize("pool", ["mean", "sum"])
def test_gim_weights_and_r_g_match_the_formula(pool):
  model, p, pieces, attn, g = _run(ibim_position="learned", ibim_attention="target", behaviour_pool=pool)
  r = {
    "e_i": pieces["e_i"],
    "e_b": pieces["e_b"],
    "e_c": np.asarray(g.context).mean(1),
    "e_u": np.asarray(g.user).mean(1),
    "R_ibim": pieces["R_ibim"],
    "R_iuim": pieces["R_iuim"],
    "R_icim": pieces["R_icim"],
  }
  names = gim_inputs(model, J, K)
  assert names == GIM_INPUTS
  s = np.stack([np.tanh(r[n] @ p[f"gim_score_{n}"]["kernel"][:, 0] + p[f"gim_score_{n}"]["bias"][0]) for n in names], 1)
  alpha = _softmax(s)
  proj = np.stack([r[n] @ p[f"gim_proj_{n}"]["kernel"] + p[f"gim_proj_{n}"]["bias"] for n in names], 1)
  np.testing.assert_allclose(attn["gim"], alpha, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(pieces["R_g"], (alpha[..., None] * proj).sum(1), rtol=1e-4, atol=1e-4)
  # The e_b GIM reads is the masked mean (or sum) of the behaviours; e_u / e_c reach the MLP unpooled.
  e_b = np.asarray(g.behaviour).sum(1) / (np.maximum(LENGTHS, 1)[:, None] if pool == "mean" else 1)
  np.testing.assert_allclose(pieces["e_b"], e_b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(pieces["e_u"], np.asarray(g.user).reshape(B, -1), rtol=1e-6)
  np.testing.assert_allclose(pieces["e_c"], np.asarray(g.context).reshape(B, -1), rtol=1e-6)


def test_gim_reads_only_the_inputs_the_data_has():
  model, _, pieces, attn, _ = _run(g=_groups(user=0, context=0))
  assert gim_inputs(model, 0, 0) == ("e_i", "e_b", "R_ibim")
  assert attn["gim"].shape == (B, 3) and "e_u" not in pieces and "e_c" not in pieces


@pytest.mark.parametrize(
  "name, removed",
  [("mian_no_ibim", "R_ibim"), ("mian_no_iuim", "R_iuim"), ("mian_no_icim", "R_icim"), ("mian_no_gim", "R_g")],
)
def test_each_ablation_mlp_input_is_mians_minus_the_module(name, removed):
  _, p, full, _, _ = _run("mian")
  _, _, ablated, _, _ = _run(name, given=p)  # the same weights wherever the ablation has them
  assert list(ablated) == [n for n in full if n != removed]
  for n, v in ablated.items():  # what the removed module does not feed is unchanged (GIM feeds only R_g)
    if n != "R_g":
      np.testing.assert_allclose(v, full[n], rtol=1e-6, atol=1e-6)


def _gru(x, mask, p):
  """DIEN's GRU in numpy (layers/gru.py's formula), the state carried unchanged at padding [B, T, H]."""
  sig = lambda z: 1 / (1 + np.exp(-z))
  gates, cand = p["scan"]["cell"]["gates"], p["scan"]["cell"]["candidate"]
  h = np.zeros((x.shape[0], cand["kernel"].shape[1]))
  out = np.zeros(x.shape[:2] + h.shape[-1:])
  for t in range(x.shape[1]):
    r, k = np.split(sig(np.concatenate([x[:, t], h], -1) @ gates["kernel"] + gates["bias"]), 2, -1)
    c = np.tanh(np.concatenate([x[:, t], r * h], -1) @ cand["kernel"] + cand["bias"])
    h = np.where(mask[:, t, None], k * h + (1 - k) * c, h)
    out[:, t] = h
  return out


def _encoded(p, x, mask, encoder):
  """IBIM's encoder output in numpy for model.ibim_encoder `encoder` (one block, as _run's config)."""
  h = x
  if encoder in ("gru", "gru_pre_ln"):
    h = _gru(h, mask, p["ibim_gru"])
  if encoder in ("pre_ln", "causal", "gru_pre_ln"):
    enc = p["ibim_encoder"]
    h = _block(h, mask, enc["block0"], True, causal=encoder == "causal")
    h = _layer_norm(h, enc["ln_final"]) * mask[..., None]
  return h


def _target_pool(p, e_i, h, mask):
  """R_ibim and alpha of the activation-unit pooling (model.ibim_attention=target) in numpy."""
  a = p["ibim_target"]
  q = np.broadcast_to(e_i[:, None], h.shape)
  z = np.concatenate([q, h, q - h, q * h], -1)
  z = 1 / (1 + np.exp(-(z @ a["dense0"]["kernel"] + a["dense0"]["bias"])))
  s = (z @ a["score"]["kernel"] + a["score"]["bias"])[..., 0]
  alpha = np.where(mask, _softmax(np.where(mask, s, -1e9)), 0)
  v = np.concatenate([q, h], -1)
  return (alpha[..., None] * v).sum(1), alpha


@pytest.mark.parametrize("encoder", ["causal", "gru", "gru_pre_ln"])
def test_sequential_ibim_encoders_match_their_formulas(encoder):
  model, p, pieces, attn, g = _run(ibim_encoder=encoder, ibim_last_state=True)
  e_i, e_b = np.asarray(g.item), np.asarray(g.behaviour)
  h = _encoded(p, e_b, MASK, encoder)
  r_ibim, alpha = _target_pool(p, e_i, h, MASK)
  assert pieces["R_ibim"].shape == (B, 2 * DI) and pieces["h_last"].shape == (B, DI)
  np.testing.assert_allclose(attn["ibim"], alpha, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(pieces["R_ibim"], r_ibim, rtol=1e-4, atol=1e-4)
  # h_last: the output at each row's last real behaviour; 0 for the empty history (row 2)
  last = np.stack([h[b, n - 1] if n else np.zeros(DI) for b, n in enumerate(LENGTHS)])
  np.testing.assert_allclose(pieces["h_last"], last, rtol=1e-4, atol=1e-5)
  assert np.all(pieces["h_last"][2] == 0)
  assert gim_inputs(model, J, K) == (*GIM_INPUTS, "h_last") and attn["gim"].shape == (B, 8)
  # Row 0's behaviour 3 changed: a sequential encoder's outputs before it stay (GRU + Pre-LN's Transformer
  # reads the whole sequence: they move), its own output and h_last move.
  later = g.replace(behaviour=g.behaviour.at[0, 3].add(jnp.linspace(-1.0, 1.0, DI)))
  h2 = _encoded(p, np.asarray(later.behaviour), MASK, encoder)
  assert np.allclose(h2[0, :3], h[0, :3], rtol=1e-6) == (encoder != "gru_pre_ln")
  assert not np.allclose(h2[0, 3], h[0, 3], atol=1e-4)
  _, _, moved, _, _ = _run(g=later, given=p, ibim_encoder=encoder, ibim_last_state=True)
  assert not np.allclose(moved["h_last"][0], pieces["h_last"][0], atol=1e-4)


def test_candidate_token_is_encoded_after_the_behaviours():
  model, p, pieces, attn, g = _run(ibim_encoder="pre_ln", ibim_candidate_token=True)
  e_i, e_b = np.asarray(g.item), np.asarray(g.behaviour)
  seq = np.concatenate([e_b, e_i[:, None]], 1)
  seq_mask = np.concatenate([MASK, np.ones((B, 1), bool)], 1)
  h = _encoded(p, seq, seq_mask, "pre_ln")  # the candidate attends to the real behaviours and itself
  r_ibim, alpha = _target_pool(p, e_i, h[:, :T], MASK)  # the pooling reads the behaviours' outputs only
  assert pieces["h_cand"].shape == (B, DI) and attn["ibim"].shape == (B, T)
  np.testing.assert_allclose(pieces["h_cand"], h[:, T], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(pieces["R_ibim"], r_ibim, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(attn["ibim"], alpha, rtol=1e-4, atol=1e-5)
  assert gim_inputs(model, J, K) == (*GIM_INPUTS, "h_cand")
  # With the GRU, the candidate's output is one more GRU step from the state after the last behaviour.
  _, p, pieces, _, _ = _run(ibim_encoder="gru", ibim_candidate_token=True, ibim_last_state=True)
  h = _gru(seq, seq_mask, p["ibim_gru"])
  np.testing.assert_allclose(pieces["h_cand"], h[:, T], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(pieces["h_last"][[0, 1, 3]], h[[0, 1, 3], LENGTHS[[0, 1, 3]] - 1], rtol=1e-4, atol=1e-5)


def _aux_loss(encoder, g, w_e_zero=True):
  """(MIAN's training aux_loss, its params) for `encoder` with hand-set weights; with w_e_zero the aux net's
  first layer ignores the scored behaviour, so the loss no longer depends on which negative was drawn."""
  model = models.get(
    "mian",
    ModelConfig(mlp=(7,), gim_dim=4, attention_mlp=(5,), ibim_heads=HEADS, ibim_encoder=encoder, ibim_aux_loss=True),
  )
  variables = model.init(jax.random.key(0), g, False)
  params = _hand_set(variables["params"])
  if w_e_zero:
    kernel = params["ibim_aux_net"]["dense0"]["kernel"]
    params["ibim_aux_net"]["dense0"]["kernel"] = kernel.at[DI:].set(0.0)  # rows of e in [h_t; e]
  rngs = {"dropout": jax.random.key(1), "negatives": jax.random.key(2)}
  (_, extras), _ = model.apply({**variables, "params": params}, g, True, rngs=rngs, mutable=["batch_stats"])
  return extras, jax.tree.map(np.asarray, params)


@pytest.mark.parametrize("encoder", ["gru", "gru_pre_ln", "causal"])
def test_ibim_auxiliary_loss_reads_the_states_before_the_next_behaviour(encoder):
  # Every real behaviour its own id, so that every position finds a negative with another id.
  ids = jnp.asarray(np.where(MASK, np.arange(1, B * T + 1).reshape(B, T), 0), jnp.int32)
  g = _groups().replace(behaviour_ids=ids)
  extras, p = _aux_loss(encoder, g)
  assert extras["aux_loss"].shape == () and "aux_loss" not in _run(ibim_encoder=encoder, ibim_aux_loss=True)[3]
  # The states a_t: the GRU's (before gru_pre_ln's Transformer), the causal Transformer's output.
  a = _encoded(p, np.asarray(g.behaviour), MASK, "gru" if encoder != "causal" else "causal")
  aux = p["ibim_aux_net"]
  sig = lambda z: 1 / (1 + np.exp(-z))
  z = sig(a @ aux["dense0"]["kernel"][:DI] + aux["dense0"]["bias"])
  z = sig(z @ aux["dense1"]["kernel"] + aux["dense1"]["bias"])
  logit = (z @ aux["logit"]["kernel"] + aux["logit"]["bias"])[..., 0]  # the same for e_pos and e_neg
  per_t = np.log1p(np.exp(-logit)) + np.log1p(np.exp(logit))  # -log p - log(1 - p)
  pairs = MASK[:, :-1] & MASK[:, 1:]  # t and t + 1 real: 4 + 1 + 0 + 2 pairs
  assert pairs.sum() == 7
  np.testing.assert_allclose(float(extras["aux_loss"]), per_t[:, :-1][pairs].mean(), rtol=1e-5)
  # With the behaviour part of the first layer back, the next behaviour (and its negative) moves the loss.
  full, _ = _aux_loss(encoder, g, w_e_zero=False)
  assert np.isfinite(float(full["aux_loss"])) and not np.isclose(float(full["aux_loss"]), float(extras["aux_loss"]))


@pytest.mark.parametrize("product", ["history", "fields"])
def test_candidate_products_match_their_formulas(product):
  model, p, pieces, attn, g = _run(candidate_product=product)
  e_i, e_b = np.asarray(g.item), np.asarray(g.behaviour)
  np.testing.assert_allclose(pieces["p_ib"], e_i * e_b.sum(1), rtol=1e-5, atol=1e-6)
  extra = ("p_ib",)
  if product == "fields":
    for name, pooled in (("p_iu", "R_iuim"), ("p_ic", "R_icim")):
      want = (e_i @ p[f"product_{name}"]["kernel"]) * pieces[pooled][:, DI:]  # the pooled field, width D
      assert pieces[name].shape == (B, D)
      np.testing.assert_allclose(pieces[name], want, rtol=1e-4, atol=1e-5)
    extra += ("p_iu", "p_ic")
    # Without IUIM there is no pooled user field to multiply
    _, _, ablated, _, _ = _run("mian_no_iuim", given=p, candidate_product=product)
    assert "p_iu" not in ablated and "p_ic" in ablated
  assert gim_inputs(model, J, K) == (*GIM_INPUTS, *extra) and attn["gim"].shape == (B, 7 + len(extra))
  names = list(pieces)
  assert names[-len(extra) - 2 : -2] == list(extra)  # in the MLP input after r's other pieces, before e_u / e_c


def test_mian_paper_is_the_papers_model_whatever_the_config_says():
  """mian_paper = mian with models.PAPER (the paper's IBIM, additive pooling, no product, MLP on R_g), and the
  config's MIAN options change nothing of it; the package's mian is the configuration chosen on validation."""
  g = _groups()
  base = dict(mlp=(7,), gim_dim=4, attention_mlp=(5,), ibim_heads=HEADS)
  default = ModelConfig(**base)
  assert (default.ibim_encoder, default.ibim_aux_loss, default.candidate_product) == ("gru", True, "history")
  paper = models.get("mian", ModelConfig(**base, **models.PAPER))
  expected_vars = paper.init(jax.random.key(0), g, False)
  expected, _ = paper.apply(expected_vars, g, False)
  for options in (
    {},
    {
      "ibim_encoder": "causal",
      "ibim_attention": "target",
      "candidate_product": "fields",
      "ibim_sink": True,
      "ibim_position": "learned",
      "mlp_on_concat": True,
    },
  ):
    model = models.get("mian_paper", ModelConfig(**base, **options))
    variables = model.init(jax.random.key(0), g, False)
    assert jax.tree.structure(variables) == jax.tree.structure(expected_vars)
    logit, _ = model.apply(expected_vars, g, False)
    np.testing.assert_array_equal(np.asarray(logit), np.asarray(expected))
  assert set(models.PAPER).isdisjoint(models.fields("mian_paper"))
