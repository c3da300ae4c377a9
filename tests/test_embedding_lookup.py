"""How the step reads the tables (train.embedding_lookup, train.one_hot_rows; layers/embedding.py): batched
(one gather per table width over every field's ids, the tables concatenated with row offsets) and one-hot
(a matmul for tiny tables) give the per-field gathers' embeddings exactly, their gradients up to the order of
float sums, the same NaN for an id outside its table, and the same train step, dense and row-sparse."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mian_jax import models
from mian_jax.config import ModelConfig, TrainConfig
from mian_jax.layers import embedding
from mian_jax.layers.embedding import Lookup
from mian_jax.schema import Feature, FeatureSchema
from mian_jax.train import optim, state as state_lib, step as step_lib

T, B, D = 5, 6, 4
SCHEMA = FeatureSchema(
  (
    Feature("item_id", "item", "categorical", 30, "item"),
    Feature("cat", "item", "categorical", 7, "cat"),
    Feature("hist_item", "behaviour", "sequence", 30, "item"),
    Feature("hist_cat", "behaviour", "sequence", 7, "cat"),
    Feature("hist_age", "behaviour", "sequence", 9),  # side behaviour field: width 2D
    Feature("user_id", "user", "categorical", 12),
    Feature("city", "context", "categorical", 5),
    Feature("price", "context", "numeric"),
  ),
  user_key="user_id",
  max_len=T,
)
WAYS = {
  "batched": Lookup(batched=True),
  "one_hot": Lookup(one_hot_rows=10),  # cat, city, hist_age (and the first-order tables of those): one-hot
  "both": Lookup(batched=True, one_hot_rows=8),
}


def batch(seed=0):
  rng = np.random.default_rng(seed)
  ids = lambda v, *shape: rng.integers(0, v, shape).astype(np.int32)
  return {
    "item_id": ids(30, B),
    "cat": ids(7, B),
    "hist_item": ids(30, B, T),
    "hist_cat": ids(7, B, T),
    "hist_age": ids(9, B, T),
    "hist_len": np.array([0, 1, 2, 5, 3, 4], np.int32),
    "user_id": ids(12, B),
    "city": ids(5, B),
    "price": rng.normal(size=B).astype(np.float32),
    "label": rng.integers(0, 2, B).astype(np.float32),
    "weight": np.ones(B, np.float32),
  }


def _leaves(groups):
  return {k: np.asarray(getattr(groups, k)) for k in ("item", "behaviour", "mask", "user", "context", "linear")}


@pytest.mark.parametrize("way", WAYS)
def test_lookups_give_the_per_field_embeddings_and_gradients(way):
  tables = embedding.init_tables(jax.random.key(0), SCHEMA, D, linear=True)
  b = batch()
  want, got = embedding.embed(tables, b, SCHEMA), embedding.embed(tables, b, SCHEMA, WAYS[way])
  for k, v in _leaves(want).items():
    np.testing.assert_array_equal(_leaves(got)[k], v, err_msg=k)  # the same rows, bit for bit
  w = {k: jnp.asarray(np.random.default_rng(1).normal(size=v.shape), jnp.float32) for k, v in _leaves(want).items()}
  loss = lambda lookup: (
    lambda t: sum(jnp.sum(getattr(embedding.embed(t, b, SCHEMA, lookup), k) * w[k]) for k in w if k != "mask")
  )
  g_want, g_got = jax.grad(loss(Lookup()))(tables), jax.grad(loss(WAYS[way]))(tables)
  assert set(g_got) == set(tables)
  for k in tables:
    np.testing.assert_allclose(g_got[k], g_want[k], rtol=1e-6, atol=1e-7, err_msg=k)
    assert np.any(np.asarray(g_want[k]) != 0), k  # every table is read, so the comparison is not of zeros


@pytest.mark.parametrize("way", WAYS)
def test_an_id_outside_its_table_reads_nan_and_padding_reads_zero(way):
  """An id past the end of its table reads NaN (a gather's fill) in every way, not the next table's row;
  -1 counts from the end as jnp.take does; whatever the padding holds, it reads 0 and gets no gradient."""
  tables = embedding.init_tables(jax.random.key(0), SCHEMA, D, linear=True)
  b = batch()
  b["cat"] = np.array([7, -1, 100, 0, 1, 2], np.int32)  # past the end (would be item row 0 batched), -1, far past
  b["hist_cat"][0] = 7  # row 0 has no history: all padding, ids past the end
  b["hist_item"][1, 1:] = -40  # row 1: one real position, the rest padding outside the table
  got = embedding.embed(tables, b, SCHEMA, WAYS[way])
  item = np.asarray(got.item)
  assert np.all(np.isnan(item[[0, 2], D:])) and not np.isnan(item[[0, 2], :D]).any()
  np.testing.assert_array_equal(item[1, D:], np.asarray(tables["cat"])[-1])
  assert not np.isnan(item[3:]).any()
  beh = np.asarray(got.behaviour)
  assert np.all(beh[0] == 0) and np.all(beh[1, 1:] == 0) and not np.isnan(beh).any()
  grad = jax.grad(lambda t: jnp.sum(embedding.embed(t, b, SCHEMA, WAYS[way]).behaviour))(tables)
  assert all(np.isfinite(np.asarray(g)).all() for g in grad.values())


def test_the_lookup_rule():
  cpu, gpu = embedding.resolve_lookup("auto", -1, "cpu", False), embedding.resolve_lookup("auto", -1, "gpu", False)
  assert cpu == Lookup(False, embedding.ONE_HOT_ROWS["cpu"]) and gpu.batched
  assert not embedding.resolve_lookup("auto", 0, "gpu", True).batched  # tables split over `model`: per field
  assert embedding.resolve_lookup("batched", 50, "cpu", True) == Lookup(True, 50)
  assert embedding.resolve_lookup("per_field", 0, "tpu", False) == Lookup(False, 0)


@pytest.mark.parametrize("embedding_optimizer", ["adam", "lazy_adam"])
def test_the_train_step_is_the_same_whichever_the_lookup(embedding_optimizer):
  """Three steps of DeepFM (first-order tables too), dense Adam and row-sparse LazyAdam: the same
  parameters every way (up to float summation order)."""
  model = models.get("deepfm", ModelConfig(embed_dim=D, mlp=(8,)))
  opt = optim.make_optimizer(TrainConfig(embedding_optimizer=embedding_optimizer), 10)
  init = jax.jit(state_lib.make_init(model, SCHEMA, D, opt))(jax.random.key_data(jax.random.key(0)))
  out = {}
  for way, lookup in {"per_field": Lookup(), **WAYS}.items():
    step = jax.jit(step_lib.make_train_step(model, SCHEMA, opt, lookup=lookup))
    state = init
    for i in range(3):
      state, metrics = step(state, batch(i))
    assert bool(metrics["finite"])
    out[way] = state.params
  for way in WAYS:
    for a, c in zip(jax.tree.leaves(out[way]), jax.tree.leaves(out["per_field"])):
      np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-7, err_msg=way)
