"""DIN / DIEN and their layers: Dice, target attention, GRU / AUGRU, masked scan, in-batch negatives."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mian_jax import models
from mian_jax.config import ModelConfig
from mian_jax.layers.dice import Dice, DiceMLP
from mian_jax.layers.embedding import Groups
from mian_jax.layers.gru import AUGRUCell, GRUCell, MaskedRNN
from mian_jax.layers.negatives import sample_negatives
from mian_jax.layers.target_attention import TargetAttention

B, T, DI, D, J, K = 4, 6, 8, 4, 2, 3
LENGTHS = np.array([6, 3, 0, 1])
MASK = jnp.asarray(np.arange(T)[None, :] < LENGTHS[:, None])


def np_dice(x, alpha, eps=1e-9):
  mean = x.mean(0)
  std = np.sqrt(np.mean((x - mean) ** 2 + eps, 0))
  p = 1.0 / (1.0 + np.exp(-(x - mean) / (std + eps)))
  return p * x + (1 - p) * alpha * x


def test_dice_matches_formula():
  x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32) * 2 + 1
  alpha = np.array([0.1, -0.2, 0.5], np.float32)
  variables = {"params": {"alpha": jnp.asarray(alpha)}, "batch_stats": {"mean": jnp.zeros(3), "var": jnp.ones(3)}}
  out, updated = Dice().apply(variables, jnp.asarray(x), True, mutable=["batch_stats"])
  np.testing.assert_allclose(np.asarray(out), np_dice(x, alpha), rtol=1e-5, atol=1e-6)
  # Training moves the running moments by 1 - momentum towards the batch's moments ...
  np.testing.assert_allclose(updated["batch_stats"]["mean"], 0.01 * x.mean(0), rtol=1e-5)
  np.testing.assert_allclose(updated["batch_stats"]["var"], 0.99 + 0.01 * x.var(0), rtol=1e-5)
  # ... and evaluation normalises with the running moments, whatever the batch holds.
  mean, var = x.mean(0) + 0.3, x.var(0) * 2.0
  stats = {"mean": jnp.asarray(mean), "var": jnp.asarray(var)}
  got = Dice().apply({**variables, "batch_stats": stats}, jnp.asarray(x), False)
  p = 1.0 / (1.0 + np.exp(-(x - mean) / (np.sqrt(var + 1e-9) + 1e-9)))
  np.testing.assert_allclose(np.asarray(got), p * x + (1 - p) * alpha * x, rtol=1e-5, atol=1e-6)
  one = Dice().apply({**variables, "batch_stats": stats}, jnp.asarray(x[:1]), False)
  np.testing.assert_allclose(np.asarray(one), np.asarray(got[:1]), rtol=1e-6)
  # The tower in training normalises with the batch's own moments.
  mlp = DiceMLP((3,))
  params = mlp.init(jax.random.key(0), jnp.asarray(x))
  params["params"]["dice0"]["alpha"] = jnp.asarray(alpha)
  p = jax.tree.map(np.asarray, params["params"])
  hidden = np_dice(x @ p["dense0"]["kernel"] + p["dense0"]["bias"], alpha)
  want = (hidden @ p["logit"]["kernel"] + p["logit"]["bias"])[:, 0]
  got, _ = mlp.apply(params, jnp.asarray(x), True, rngs={"dropout": jax.random.key(1)}, mutable=["batch_stats"])
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def _qk(seed=0):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.normal(size=(B, DI)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(B, T, DI)), jnp.float32) * MASK[..., None]
  return q, k


def test_din_attention_ignores_padding_and_is_unnormalised():
  q, k = _qk()
  att = TargetAttention((8, 4))
  params = att.init(jax.random.key(0), q, k, MASK)
  out, w = att.apply(params, q, k, MASK)
  k2 = jnp.where(MASK[..., None], k, 5.0 + jnp.arange(DI, dtype=jnp.float32))
  out2, w2 = att.apply(params, q, k2, MASK)
  np.testing.assert_allclose(out, out2, rtol=1e-6)
  np.testing.assert_allclose(w, w2, rtol=1e-6)
  assert np.all(np.asarray(w)[~np.asarray(MASK)] == 0)
  sums = np.asarray(w).sum(1)[LENGTHS > 0]
  assert not np.allclose(sums, 1.0, atol=1e-3)
  np.testing.assert_allclose(out, jnp.einsum("bt,btd->bd", w, k), rtol=1e-5, atol=1e-6)
  # The normalised form (DIEN): softmax over the real positions, an empty history all 0.
  att_n = TargetAttention((8, 4), normalise=True, project_query=True)
  h = k[..., :5]
  params_n = att_n.init(jax.random.key(1), q, h, MASK)
  _, wn = att_n.apply(params_n, q, h, MASK)
  np.testing.assert_allclose(np.asarray(wn).sum(1), (LENGTHS > 0).astype(np.float32), atol=1e-6)
  assert np.all(np.asarray(wn)[~np.asarray(MASK)] == 0)


def test_augru_attention_zero_keeps_state_and_one_is_gru():
  rng = np.random.default_rng(1)
  h = jnp.asarray(rng.normal(size=(B, 5)), jnp.float32)
  x = jnp.asarray(rng.normal(size=(B, 3)), jnp.float32)
  params = GRUCell(5).init(jax.random.key(0), h, x)
  gru = GRUCell(5).apply(params, h, x)
  np.testing.assert_allclose(AUGRUCell(5).apply(params, h, x, jnp.zeros(B)), h, rtol=1e-6)
  np.testing.assert_allclose(AUGRUCell(5).apply(params, h, x, jnp.ones(B)), gru, rtol=1e-6)
  half = AUGRUCell(5).apply(params, h, x, jnp.full(B, 0.5))
  assert not np.allclose(half, gru) and not np.allclose(half, h)
  # GRU step by hand (TF GRUCell form: reset before the candidate's matmul).
  p = jax.tree.map(np.asarray, params["params"])
  sig = lambda z: 1 / (1 + np.exp(-z))
  hn, xn = np.asarray(h), np.asarray(x)
  r, k = np.split(sig(np.concatenate([xn, hn], -1) @ p["gates"]["kernel"] + p["gates"]["bias"]), 2, -1)
  c = np.tanh(np.concatenate([xn, r * hn], -1) @ p["candidate"]["kernel"] + p["candidate"]["bias"])
  np.testing.assert_allclose(gru, k * hn + (1 - k) * c, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attentional", [False, True])
def test_masked_scan_keeps_state_through_padding(attentional):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(B, T, 3)), jnp.float32)
  att = jnp.asarray(rng.uniform(size=(B, T)), jnp.float32)
  rnn = MaskedRNN(5, attentional=attentional)
  params = rnn.init(jax.random.key(0), x, MASK, att)
  h_bth, last = rnn.apply(params, x, MASK, att)
  h_bth, last = np.asarray(h_bth), np.asarray(last)
  cell_params = {"params": params["params"]["scan"]["cell"]}
  cell = AUGRUCell(5) if attentional else GRUCell(5)
  for b, n in enumerate(LENGTHS):
    h = jnp.zeros((1, 5))
    for t in range(n):
      args = (h, x[b : b + 1, t]) + ((att[b : b + 1, t],) if attentional else ())
      h = cell.apply(cell_params, *args)
      np.testing.assert_allclose(h_bth[b, t], h[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(last[b], h[0], rtol=1e-5, atol=1e-6)  # the last real state (0 if empty)
    np.testing.assert_allclose(h_bth[b, n:], np.broadcast_to(h[0], (T - n, 5)), rtol=1e-6, atol=1e-7)
  x2 = jnp.where(MASK[..., None], x, 7.0)  # padded inputs do not matter
  h2, last2 = rnn.apply(params, x2, MASK, att)
  np.testing.assert_allclose(h2, h_bth, rtol=1e-6)
  np.testing.assert_allclose(last2, last, rtol=1e-6)


def test_negatives_differ_from_positive_and_follow_the_key():
  rng = np.random.default_rng(3)
  ids = jnp.asarray(np.where(np.asarray(MASK), rng.integers(1, 4, size=(B, T)), 0))
  sample = jax.jit(sample_negatives)
  row, pos, valid = map(np.asarray, sample(jax.random.key(0), ids, MASK))
  ids_np, mask_np = np.asarray(ids), np.asarray(MASK)
  assert not np.any(valid & ~mask_np)
  assert valid.sum() >= 0.8 * mask_np.sum()
  b, t = np.nonzero(valid)
  assert np.all(ids_np[row[b, t], pos[b, t]] != ids_np[b, t])
  assert np.all(mask_np[row[b, t], pos[b, t]])
  again = sample(jax.random.key(0), ids, MASK)
  for x, y in zip((row, pos, valid), again):
    np.testing.assert_array_equal(x, y)
  other = sample(jax.random.key(1), ids, MASK)
  assert np.any(other[0] != row) or np.any(other[1] != pos)
  same = jnp.where(MASK, 2, 0)  # one id only: no valid negative anywhere
  assert not np.asarray(sample(jax.random.key(0), same, MASK)[2]).any()


def _groups(seed=0):
  rng = np.random.default_rng(seed)
  f = lambda *s: jnp.asarray(rng.normal(size=s) * 0.5, jnp.float32)
  ids = np.where(np.asarray(MASK), rng.integers(1, 4, size=(B, T)), 0)
  return Groups(
    item=f(B, DI),
    behaviour=f(B, T, DI) * MASK[..., None],
    mask=MASK,
    user=f(B, J, D),
    context=f(B, K, D),
    behaviour_ids=jnp.asarray(ids),
    linear=jnp.zeros((B, 0)),
  )


CFG = ModelConfig(embed_dim=D, mlp=(8, 4), attention_mlp=(8, 4), gru_dim=0)
RNGS = {"dropout": jax.random.key(1), "negatives": jax.random.key(2)}


@pytest.mark.parametrize("name", ["din", "dien"])
def test_models_train_and_eval(name):
  g = _groups()
  model = models.get(name, CFG)
  params = model.init({"params": jax.random.key(0)}, g, False)  # as the trainer: init in eval mode
  logit_tr, ex_tr = model.apply(params, g, True, rngs=RNGS)
  logit_ev, ex_ev = model.apply(params, g, False)
  for logit in (logit_tr, logit_ev):
    assert logit.shape == (B,) and np.all(np.isfinite(logit))
  w = np.asarray(ex_ev["attention"])
  assert w.shape == (B, T) and np.all(w[~np.asarray(MASK)] == 0)
  assert "aux_loss" not in ex_ev
  if name == "din":
    assert "aux_loss" not in ex_tr
    return
  np.testing.assert_allclose(w.sum(1), (LENGTHS > 0).astype(np.float32), atol=1e-6)
  aux = float(ex_tr["aux_loss"])
  assert np.isfinite(aux) and aux > 0

  def aux_loss(p, beh):
    return model.apply(p, g.replace(behaviour=beh), True, rngs=RNGS)[1]["aux_loss"]

  grads_p, grad_b = jax.grad(aux_loss, argnums=(0, 1))(params, g.behaviour)
  leaves = jax.tree.leaves(grads_p) + [grad_b]
  assert all(np.all(np.isfinite(x)) for x in leaves)
  assert np.any(np.asarray(jax.tree.leaves(grads_p["params"]["aux_net"])[0]) != 0)
  assert np.any(np.asarray(grad_b) != 0)


@pytest.mark.parametrize(
  "name, mlp_in, blocks",
  [
    ("din", 4 * DI + (J + K) * D, {"attention", "mlp"}),  # [e_i; interest; s; e_i * s; e_u; e_c]
    ("dien", 4 * DI + (J + K) * D, {"extractor", "aux_net", "attention", "evolution", "mlp"}),
    ("dien_no_product", 3 * DI + (J + K) * D, {"extractor", "aux_net", "attention", "evolution", "mlp"}),
    ("dien_state_only", 2 * DI + (J + K) * D, {"extractor", "aux_net", "attention", "evolution", "mlp"}),
    ("dien_gru_attention", 4 * DI + (J + K) * D, {"extractor", "aux_net", "attention", "mlp"}),
    ("dien_no_extractor", 4 * DI + (J + K) * D, {"attention", "evolution", "mlp"}),
  ],
)
def test_din_and_dien_parts_read_what_their_docstrings_say(name, mlp_in, blocks):
  g = _groups()
  model = models.get(name, CFG)
  variables = model.init({"params": jax.random.key(0)}, g, False)
  params = variables["params"]
  assert set(params) == blocks
  assert params["mlp"]["dense0"]["kernel"].shape[0] == mlp_in
  (_, extras), _ = model.apply(variables, g, True, rngs=RNGS, mutable=["batch_stats"])
  assert ("aux_loss" in extras) == ("extractor" in blocks)
  if name == "dien_gru_attention":  # the interest is sum_t a_t h_t of the extractor's states, by hand
    logit, extras = model.apply(variables, g, False)
    h, _ = MaskedRNN(DI).apply({"params": params["extractor"]}, g.behaviour, MASK)
    interest = jnp.einsum("bt,bth->bh", extras["attention"], h)
    s = g.behaviour.sum(1)
    x = jnp.concatenate([g.item, interest, s, g.item * s, g.user.reshape(B, -1), g.context.reshape(B, -1)], -1)
    mlp = {
      "params": params["mlp"],
      **({"batch_stats": variables["batch_stats"]["mlp"]} if "batch_stats" in variables else {}),
    }
    want = DiceMLP(CFG.mlp, CFG.dropout).apply(mlp, x, False)
    np.testing.assert_allclose(logit, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
  "din_inputs, activation", [("reference", "dice"), ("sum", "dice"), ("attention", "relu"), ("reference", "relu")]
)
def test_din_inputs_and_activation_are_the_docstrings(din_inputs, activation):
  """DIN's MLP reads [e_i; interest; (s; e_i * s) | (s) | (); e_u; e_c] as model.din_inputs says, through a
  Dice or a ReLU tower as model.mlp_activation says: the logit by hand from the model's own attention."""
  import dataclasses

  from mian_jax.layers.mlp import MLP

  cfg = dataclasses.replace(CFG, din_inputs=din_inputs, mlp_activation=activation)
  g = _groups()
  model = models.get("din", cfg)
  variables = model.init({"params": jax.random.key(0)}, g, False)
  assert ("batch_stats" in variables) == (activation == "dice")
  logit, extras = model.apply(variables, g, False)
  interest = jnp.einsum("bt,bti->bi", extras["attention"], g.behaviour)
  s = g.behaviour.sum(1)
  history = {"reference": [s, g.item * s], "sum": [s], "attention": []}[din_inputs]
  x = jnp.concatenate([g.item, interest, *history, g.user.reshape(B, -1), g.context.reshape(B, -1)], -1)
  params = variables["params"]
  assert params["mlp"]["dense0"]["kernel"].shape[0] == x.shape[1]
  if activation == "dice":
    want = DiceMLP(cfg.mlp).apply({"params": params["mlp"], "batch_stats": variables["batch_stats"]["mlp"]}, x, False)
  else:
    want = MLP(cfg.mlp).apply({"params": params["mlp"]}, x, False)
  np.testing.assert_allclose(logit, want, rtol=1e-5, atol=1e-6)
