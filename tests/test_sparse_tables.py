"""Row-sparse table updates (train.embedding_optimizer): sgd equals dense SGD, lazy_adam equals dense
Adam on rows touched every step and leaves untouched rows and moments bit-identical, duplicate ids in a
batch sum, and the unique-row lookup gives the same embeddings as the full tables."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mian_jax import models
from mian_jax.config import ModelConfig, TrainConfig
from mian_jax.layers import embedding
from mian_jax.schema import Feature, FeatureSchema
from mian_jax.train import optim, state as state_lib, step as step_lib

T, V = 4, 30
SCHEMA = FeatureSchema(
  (
    Feature("item_id", "item", "categorical", V, "item"),
    Feature("hist_item_id", "behaviour", "sequence", V, "item"),
    Feature("user_id", "user", "categorical", 10),
    Feature("price", "context", "numeric"),
  ),
  user_key="user_id",
  max_len=T,
)


def batch(rng, rows=8, items=range(1, 11)):
  items = np.asarray(list(items))
  return {
    "item_id": rng.choice(items, rows).astype(np.int32),
    "hist_item_id": rng.choice(items, (rows, T)).astype(np.int32),
    "hist_len": rng.integers(1, T + 1, rows).astype(np.int32),
    "user_id": rng.integers(1, 10, rows).astype(np.int32),
    "price": rng.normal(size=rows).astype(np.float32),
    "label": rng.integers(0, 2, rows).astype(np.float32),
    "weight": np.ones(rows, np.float32),
  }


def test_unique_rows_give_the_same_embeddings():
  rng = np.random.default_rng(0)
  tables = embedding.init_tables(jax.random.key(1), SCHEMA, 4, linear=True)
  b = batch(rng)
  ids, rows, local = embedding.unique_rows(tables, b, SCHEMA)
  full, sparse = embedding.embed(tables, b, SCHEMA), embedding.embed(rows, local, SCHEMA)
  for name in ("item", "behaviour", "mask", "user", "context", "linear"):
    np.testing.assert_allclose(getattr(full, name), getattr(sparse, name), rtol=1e-6, err_msg=name)
  # behaviour ids become positions in ids["item"]: equal ids stay equal, padding stays 0 (masked).
  local_ids = np.asarray(ids["item"])[np.asarray(sparse.behaviour_ids)]
  np.testing.assert_array_equal(np.where(np.asarray(full.mask), local_ids, 0), np.asarray(full.behaviour_ids))
  used = np.unique(np.concatenate([b["item_id"], b["hist_item_id"].ravel()]))
  got = np.asarray(ids["item"])  # V = 30 rows <= 40 ids in the batch: the scatter-of-flags layout
  assert sorted(got[got < V].tolist()) == used.tolist() and np.all(got[np.isin(got, used, invert=True)] == V)
  assert np.all(np.asarray(rows["item"])[got == V] == 0)  # padding reads zeros
  user = np.asarray(ids["user_id"])  # 10 rows > 8 ids: the sorted-unique layout
  assert user[: len(np.unique(b["user_id"]))].tolist() == np.unique(b["user_id"]).tolist()
  assert np.all(user[len(np.unique(b["user_id"])) :] == 10)
  assert ids["linear:item"] is ids["item"]


def test_sparse_sgd_equals_dense_sgd():
  """The same SGD on the network in both runs: sparse row updates give the dense result."""
  rng = np.random.default_rng(1)
  batches = [batch(rng) for _ in range(5)]
  out = []
  for rows in (optim.RowOptimizer("sgd"), None):
    opt = optim.Optimizer(optax.sgd(0.05), rows, optax.constant_schedule(0.05))
    model = models.get("deepfm", ModelConfig(embed_dim=4, mlp=(8,)))
    state = jax.jit(state_lib.make_init(model, SCHEMA, 4, opt))(jax.random.key_data(jax.random.key(0)))
    step = jax.jit(step_lib.make_train_step(model, SCHEMA, opt))
    for b in batches:
      state, _ = step(state, b)
    out.append(state.params)
  assert set(out[0]["tables"]) == {
    "item",
    "user_id",
    "numeric:price",
    "linear:item",
    "linear:user_id",
    "linear:numeric:price",
  }
  for k in out[1]["tables"]:  # equal up to float summation order
    np.testing.assert_allclose(out[0]["tables"][k], out[1]["tables"][k], rtol=1e-5, atol=1e-7, err_msg=k)
  for a, c in zip(jax.tree.leaves(out[0]["dense"]), jax.tree.leaves(out[1]["dense"])):
    np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-7)
  untouched = np.arange(11, V)  # ids above 10 never occur: unchanged by either run
  np.testing.assert_array_equal(out[0]["tables"]["item"][untouched], out[1]["tables"]["item"][untouched])


def test_lazy_adam_follows_adam_on_touched_rows_and_leaves_the_rest_untouched():
  rng = np.random.default_rng(2)
  table = jnp.asarray(rng.normal(size=(V, 3)), jnp.float32)
  opt = optim.RowOptimizer("lazy_adam")
  state = opt.init({"t": table})
  tx = optax.adam(0.01)
  dense_table, dense_state = table, tx.init(table)
  tables = {"t": table}
  always = np.array([1, 2, 3])  # touched every step
  for step in range(6):
    extra = np.array([10 + step])  # touched once
    ids = np.concatenate([always, extra, [V, V]]).astype(np.int32)  # padded with the out-of-range id
    g = rng.normal(size=(len(ids), 3)).astype(np.float32)
    g[-2:] = 0
    tables, state = opt.update(tables, state, {"t": jnp.asarray(ids)}, {"t": jnp.asarray(g)}, 0.01, jnp.int32(step))
    dense_g = np.zeros((V, 3), np.float32)
    dense_g[ids[:-2]] = g[:-2]
    updates, dense_state = tx.update(jnp.asarray(dense_g), dense_state)
    dense_table = optax.apply_updates(dense_table, updates)
  got = np.asarray(tables["t"])
  np.testing.assert_allclose(got[always], np.asarray(dense_table)[always], rtol=1e-5, atol=1e-7)
  untouched = np.setdiff1d(np.arange(V), np.concatenate([always, 10 + np.arange(6)]))
  np.testing.assert_array_equal(got[untouched], np.asarray(table)[untouched])  # bit-identical
  assert np.all(np.asarray(state["t"]["m"])[untouched] == 0) and np.all(np.asarray(state["t"]["v"])[untouched] == 0)
  # A row touched once and then left alone keeps its value (dense Adam would keep moving it).
  assert not np.allclose(np.asarray(dense_table)[10], got[10])


def test_duplicate_ids_in_a_batch_sum():
  b = batch(np.random.default_rng(3), rows=4, items=[5])  # every item id (candidate and history) is 5
  b["hist_len"][:] = T
  b["label"][:] = 1  # (balanced labels would cancel the shared row's gradient exactly)
  for kind in ("sgd", "lazy_adam", "adagrad"):
    opt = optim.make_optimizer(TrainConfig(learning_rate=0.1, embedding_optimizer=kind), 1)
    model = models.get("lr", ModelConfig(embed_dim=4))
    init = state_lib.make_init(model, SCHEMA, 4, opt)
    state = jax.jit(init)(jax.random.key_data(jax.random.key(0)))
    tables = state.params["tables"]
    ids, rows, local = embedding.unique_rows(tables, b, SCHEMA)
    assert int((np.asarray(ids["item"]) < V).sum()) == 1  # one unique row for 4 x (1 + T) lookups

    def loss(r):
      logit, _ = step_lib.forward(model, SCHEMA, {"tables": r, "dense": state.params["dense"]}, local, False)
      return step_lib.weighted_bce(logit, b["label"], b["weight"])

    def full_loss(t):
      logit, _ = step_lib.forward(model, SCHEMA, {"tables": t, "dense": state.params["dense"]}, b, False)
      return step_lib.weighted_bce(logit, b["label"], b["weight"])

    g_rows, g_full = jax.grad(loss)(rows), jax.grad(full_loss)(tables)
    np.testing.assert_allclose(np.asarray(g_rows["linear:item"])[0], np.asarray(g_full["linear:item"])[5], rtol=1e-5)
    after, _ = jax.jit(step_lib.make_train_step(model, SCHEMA, opt))(state, b)
    changed = np.flatnonzero(
      np.any(np.asarray(after.params["tables"]["linear:item"]) != np.asarray(tables["linear:item"]), axis=1)
    )
    assert changed.tolist() == [5], (kind, changed)
