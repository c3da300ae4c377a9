"""A row's score does not depend on its batch mates: the same probability (float tolerance) alone, in a
batch of 7 and in a batch of 4096, for every registered model, in-process (the eval step) and through
an export loaded by mian_jax.serving. The Dice layers (DIN, DIEN, MIAN's default MLP) evaluate with their running moments
(params['batch_stats'], set here to values far from their start so that they matter).

Every model is one whose layers no other model tested here holds: MIAN's ablations (`mian_no_*`) and DIEN's
parts (`DIEN_PARTS`) are their full model with inputs taken away, built of that model's layers only and with
no operation across the batch of their own (test_model_fields and test_mian_equations check what each
reads), so they are left to their full model (about 90 s of compilation less)."""

import jax
import numpy as np
import pytest

import experiments
from mian_jax import export, models, serving
from mian_jax.data import pipeline
from mian_jax.train import state as state_lib, step as step_lib, optim

SIZES = (1, 7, 4096)
TOL = {"rtol": 2e-5, "atol": 2e-6}


@pytest.fixture(scope="module")
def rows(tiny_source):
  config = experiments.get_config("commercial:tiny")
  _, batches = pipeline.eval_batches(tiny_source, "test", rows_per_process=64, max_len=config.data.max_len)
  return next(iter(batches))


def _tile(rows, n, first=0):
  """A batch of n rows: row `first` of `rows` first, then the others over and over."""
  index = np.concatenate([[first], np.resize(np.delete(np.arange(len(rows["label"])), first), n - 1)])
  return {k: v[index] for k, v in rows.items()}


def _params(name, config, schema):
  model = models.get(name, config.model)
  tx = optim.make_optimizer(config.train, 10)
  state = jax.jit(state_lib.make_init(model, schema, config.model.embed_dim, tx))(
    jax.random.key_data(jax.random.key(0))
  )
  params = jax.device_get(state.params)
  rng = np.random.default_rng(1)
  if "batch_stats" in params:  # running moments unlike any batch's
    params["batch_stats"] = jax.tree_util.tree_map_with_path(
      lambda path, x: (
        rng.uniform(0.5, 3.0, x.shape) if "var" in jax.tree_util.keystr(path) else rng.normal(size=x.shape)
      ).astype(np.float32),
      params["batch_stats"],
    )
  return model, params


FULL_MODELS = [n for n in models.names() if not n.startswith("mian_no_") and n not in models.DIEN_PARTS]


@pytest.mark.parametrize("name", FULL_MODELS)
def test_a_rows_score_is_the_same_alone_and_in_any_batch(name, tiny_source, rows, tmp_path):
  config = experiments.get_config("commercial:tiny")
  model, params = _params(name, config, tiny_source.schema)
  dice = name in ("din", "dien") or (name.startswith("mian") and config.model.mlp_activation == "dice")
  assert ("batch_stats" in params) == dice, "only Dice keeps running statistics"
  eval_step = jax.jit(step_lib.make_eval_step(model, tiny_source.schema))
  scorer = serving.Scorer.load(export.write(model, tiny_source, params, tmp_path / "model", name, platforms=("cpu",)))
  for first in (0, 5):
    alone = {n: None for n in SIZES}
    for n in SIZES:
      batch = _tile(rows, n, first)
      alone[n] = (float(np.asarray(eval_step(params, batch))[0]), float(scorer.score_ids(batch)[0]))
    want = alone[1][0]
    for n, (in_process, served) in alone.items():
      np.testing.assert_allclose(in_process, want, **TOL, err_msg=f"{name}: row {first} in a batch of {n}")
      np.testing.assert_allclose(served, want, **TOL, err_msg=f"{name}: row {first} served in a batch of {n}")
