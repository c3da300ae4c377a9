"""Bad-input robustness of every registered model: empty, full and padded behaviour histories.

On a real batch of the tiny commercial data, reshaped so that some rows have an empty history (hist_len
0, every history id 0), one row a full one (hist_len = T, no id 0) and two a partial one, every model:
(a) gives finite logits, also on a batch where no row has any behaviour;
(b) takes a finite step through the trainer's own train step (make_train_step: its loss, DIEN's
    auxiliary loss included, and its gradient with respect to every table and dense parameter);
(c) gives the same logits on every row, the same loss and the same gradients when the padded ids of
    the empty histories are other in-vocabulary ids instead of 0, or ids past the end of the tables;
(d) the same when the ids beyond hist_len of the partial histories are changed likewise (checked for
    every model, not only those with attention over the history: MIAN, DIN, DIEN);
(e) gives the same logits with EXTRA more padded positions (T + EXTRA; models in WIDER). The embedding zeroes padding,
    so (c) and (d) cannot see a softmax or an encoder that forgets the mask: a zero behaviour still
    takes a share of a softmax, and more of them would change the output. MIAN's, DIN's and DIEN's
    attention weights over the history must also be exactly 0 at padding (everywhere for an empty one).
Every row is compared because DIN / DIEN's Dice couples the rows through the batch's moments. A
control checks the history is read at all (changing a real behaviour changes the full row's logit), so
(c) and (d) cannot pass vacuously.

Speed (one device, one compilation per model, two for (e)): the parameters are random values of the shapes of the
trainer's init (jax.eval_shape, nothing compiled; random biases and first-order weights, which start
at 0 in training, so that every path reads its inputs); the step runs with plain SGD of rate 1, so new
params = params - gradient; the logits are those of the training forward pass with the step's own
rng, which XLA merges with the step's forward pass; LLVM compiles at -O0.
"""

import jax
import numpy as np
import optax
import pytest

import experiments
from mian_jax import models
from mian_jax.data import pipeline
from mian_jax.train import optim, state as state_lib, step as step_lib

ROWS = 8
EMPTY = (0, 1, 2)  # rows with no behaviour
FULL = 3  # the row with hist_len = T
PARTIAL = {4: 1, 5: 4}  # row -> hist_len, with padding beyond
TOL = 1e-6
T = experiments.get_config("commercial:tiny").data.max_len
EXTRA = 3  # padded positions added for (e)
# (e) costs a second compilation: it runs for the models whose layers are not all checked by another:
# MIAN (encoder, masked softmax pooling, masked mean; its ablations reuse them), DIEN (GRUs, softmax),
# DIN, and Wide&Deep (the masked means of the baselines' pooled behaviours and first-order weights).
WIDER = ("din", "dien", "mian", "wdl")
HISTORY_WEIGHTS = ("attention", "ibim")  # extras holding [B, T] attention weights over the history


def _sequence_fields(schema) -> list[str]:
  return [f.name for f in schema.features if f.kind == "sequence"]


def _ids(schema, name: str, rng: np.random.Generator, shape, past_end: bool = False) -> np.ndarray:
  """Real ids of sequence field `name` (never the padding id 0), or ids past the end of its table."""
  f = schema[name]
  rows = schema.tables[f.table_name]
  if past_end:
    return rng.integers(rows, 2 * rows + 1000, shape).astype(np.int32)
  return rng.integers(1, f.vocab_size, shape).astype(np.int32)


def _scramble(batch: dict, schema, rows, rng: np.random.Generator, past_end: bool = False) -> dict:
  """A copy of `batch` whose history positions t >= hist_len in `rows` hold other ids than 0."""
  out = {k: v.copy() for k, v in batch.items()}
  t = out[_sequence_fields(schema)[0]].shape[1]
  for r in rows:
    pad = np.arange(t) >= out["hist_len"][r]
    for name in _sequence_fields(schema):
      out[name][r, pad] = _ids(schema, name, rng, (int(pad.sum()),), past_end)
  return out


@pytest.fixture(scope="module")
def batches(tiny_source):
  """{variant: batch}: ROWS real test rows reshaped as the module docstring says, and their variants."""
  schema, t = tiny_source.schema, T
  _, it = pipeline.eval_batches(tiny_source, "test", rows_per_process=ROWS, max_len=T)
  edge = {k: np.array(v) for k, v in next(it).items()}
  rng = np.random.default_rng(0)
  seq = _sequence_fields(schema)
  edge["label"] = (np.arange(ROWS) % 2).astype(np.float32)  # both classes
  edge["weight"] = np.ones(ROWS, np.float32)
  edge["hist_len"][list(EMPTY)] = 0
  edge["hist_len"][FULL] = t
  for r, n in PARTIAL.items():
    edge["hist_len"][r] = n
  for name in seq:
    edge[name][FULL] = np.where(edge[name][FULL] > 0, edge[name][FULL], _ids(schema, name, rng, (t,)))
    edge[name][np.arange(t)[None, :] >= edge["hist_len"][:, None]] = 0  # the pipeline's padding
  assert (edge["hist_len"] > 0).sum() > len(PARTIAL) + 1  # some untouched real rows remain
  read = {k: v.copy() for k, v in edge.items()}  # the control: a real behaviour of the full row changed
  for name in seq:
    read[name][FULL, 0] = read[name][FULL, 0] % (schema[name].vocab_size - 1) + 1
  all_empty = {k: v.copy() for k, v in edge.items()}
  all_empty["hist_len"][:] = 0
  for name in seq:
    all_empty[name][:] = 0
  return {
    "edge": edge,
    "all_empty": all_empty,
    "read": read,
    "empty_scrambled": _scramble(edge, schema, EMPTY, rng),
    "empty_past_end": _scramble(edge, schema, EMPTY, rng, past_end=True),
    "tail_scrambled": _scramble(edge, schema, PARTIAL, rng),
    "tail_past_end": _scramble(edge, schema, PARTIAL, rng, past_end=True),
  }


def _random_like(shapes, seed: int):
  """Random float32 values for a tree of ShapeDtypeStructs: kernels N(0, 1/fan_in), LayerNorm scales
  1 + N(0, 0.1^2), everything else (tables, biases, Dice / PReLU alphas) N(0, 0.1^2)."""
  rng = np.random.default_rng(seed)

  def one(path, s):
    key = jax.tree_util.keystr(path)
    x = rng.standard_normal(s.shape)
    if "tables" not in key and len(s.shape) >= 2:
      x /= np.sqrt(np.prod(s.shape[:-1]))
    else:
      x = 1.0 + 0.1 * x if key.endswith("['scale']") else 0.1 * x
    return x.astype(s.dtype)

  return jax.tree_util.tree_map_with_path(one, shapes)


def _differ(a, b) -> list[str]:
  """The paths of the leaves of `a` that differ from those of `b` by more than TOL."""
  return [
    jax.tree_util.keystr(path)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b))
    if not np.allclose(x, y, rtol=0, atol=TOL)
  ]


def _non_finite(tree) -> list[str]:
  """The paths of the leaves of `tree` holding NaN or inf."""
  return [
    jax.tree_util.keystr(path) for path, x in jax.tree_util.tree_leaves_with_path(tree) if not np.all(np.isfinite(x))
  ]


@pytest.mark.parametrize("name", models.names())
def test_empty_and_padded_histories(name, batches, tiny_source):
  config = experiments.get_config("commercial:tiny")
  if name.startswith("mian_no_") and name != "mian_no_ibim":
    config.model.ibim_encoder = "none"  # as test_zoo_train: `mian` covers the encoder, once
  schema = tiny_source.schema
  model = models.get(name, config.model)
  tx = optim.Optimizer(optax.sgd(1.0), None, optax.constant_schedule(1.0))
  init = state_lib.make_init(model, schema, config.model.embed_dim, tx)
  shapes = jax.eval_shape(init, jax.ShapeDtypeStruct((2,), np.uint32))
  params = _random_like(shapes.params, seed=1)
  state = state_lib.TrainState(
    step=np.int32(0),
    params=params,
    opt_state=tx.init(state_lib.trainable(params)),
    rng=np.asarray(jax.random.key_data(jax.random.key(0))),
  )
  train_step = step_lib.make_train_step(model, schema, tx, config.model.aux_loss_weight)

  def forward(state, batch):  # the step's own forward pass: training mode, the step's rng
    logit, extras = step_lib.forward(
      model, schema, state.params, batch, True, jax.random.fold_in(state.rng, state.step)
    )
    return logit, {k: v for k, v in extras.items() if k in HISTORY_WEIGHTS}

  def run(state, batch):
    new_state, metrics = train_step(state, batch)
    logit, weights = forward(state, batch)
    grads = jax.tree.map(lambda old, new: old - new, state.params, new_state.params)
    return {"logit": logit, **metrics}, grads, weights

  # LLVM at -O0 halves the compilation, most of this test's time; XLA's HLO passes still run as in training
  compile_o0 = lambda f, batch: jax.jit(f).lower(state, batch).compile({"xla_backend_optimization_level": 0})
  run = compile_o0(run, batches["edge"])
  out = {k: jax.tree.map(np.asarray, run(state, b)) for k, b in batches.items()}
  for k in ("edge", "all_empty"):  # (a), (b)
    assert not _non_finite(out[k][0]), f"{name}: non-finite {_non_finite(out[k][0])} on {k}: {out[k][0]}"
    assert bool(out[k][0].get("finite", True)), f"{name}: the step on {k} was not finite: {out[k][0]}"
    assert not _non_finite(out[k][1]), f"{name}: non-finite gradients on {k} of {_non_finite(out[k][1])}"
  assert not np.allclose(out["read"][0]["logit"][FULL], out["edge"][0]["logit"][FULL], rtol=0, atol=TOL), (
    f"the control: {name} does not read the history, so (c) and (d) would prove nothing"
  )
  for k in ("empty_scrambled", "empty_past_end", "tail_scrambled", "tail_past_end"):  # (c), (d)
    for part in ("logit", "loss", "grad_norm"):
      np.testing.assert_allclose(
        out[k][0][part],
        out["edge"][0][part],
        rtol=0,
        atol=TOL,
        err_msg=f"{name}: {k} changes the {part}: padding leaks",
      )
    leaks = _differ(out[k][1], out["edge"][1])
    assert not leaks, f"{name}: {k} changes the gradients of {leaks}: padding leaks"
  for k in ("edge", "all_empty"):  # the attention over the history gives padded positions exactly 0
    padded = np.arange(T)[None, :] >= batches[k]["hist_len"][:, None]
    for w, weights in out[k][2].items():
      assert np.all(weights[padded] == 0), f"{name}: {w} attention weights at padding on {k}: {weights}"
  if name not in WIDER:
    return
  wide = {n: (np.pad(v, ((0, 0), (0, EXTRA))) if v.ndim == 2 else v) for n, v in batches["edge"].items()}
  logit_wide = np.asarray(compile_o0(forward, wide)(state, wide)[0])  # (e)
  np.testing.assert_allclose(
    logit_wide,
    out["edge"][0]["logit"],
    rtol=0,
    atol=TOL,
    err_msg=f"{name}: {EXTRA} more padded positions change the logits",
  )
