"""Data-parallel training on 8 fake CPU devices matches one device; so does a data=4,model=2 mesh whose
tables are split by rows over `model` (dense and row-sparse updates); the old state is donated."""

import jax
import numpy as np
import optax

from mian_jax import models
from mian_jax.config import ModelConfig
from mian_jax.data import pipeline
from mian_jax.train import optim, partition, state as state_lib, step as step_lib


def _train(source, devices, steps=3, spec="", rows=None, name="din"):
  mesh = partition.make_mesh(devices, spec)
  cfg = ModelConfig(embed_dim=4, gim_dim=8, mlp=(16, 8), attention_mlp=(8, 4))
  model = models.get(name, cfg)
  # plain SGD: Adam would magnify float-summation-order noise in near-zero gradients
  tx = optim.Optimizer(optax.sgd(0.5), rows, optax.constant_schedule(0.5))
  init = state_lib.make_init(model, source.schema, cfg.embed_dim, tx, partition.model_size(mesh))
  shardings = partition.init_shardings(init, mesh)
  state = partition.jit_init(init, mesh)(jax.random.key_data(jax.random.key(0)))
  train_step = partition.jit_train_step(step_lib.make_train_step(model, source.schema, tx), mesh, shardings)
  it = pipeline.train_iterator(source, batch_per_process=64, seed=0, max_len=10)
  losses = []
  for _ in range(steps):
    old = state
    state, metrics = train_step(state, partition.to_global(next(it), mesh))
    losses.append(float(metrics["loss"]))
  assert jax.tree.leaves(old.params)[0].is_deleted()  # donated: the step reused the old buffers
  return state, losses


def test_eight_devices_match_one(tiny_source):
  """DIN: its Dice activations normalise with the moments of the whole (sharded) batch."""
  assert jax.device_count() == 8
  one, loss1 = _train(tiny_source, jax.devices()[:1], name="din")
  eight, loss8 = _train(tiny_source, jax.devices(), name="din")
  batch_leaf = jax.tree.leaves(eight.params)[0]
  assert len(batch_leaf.sharding.device_set) == 8
  np.testing.assert_allclose(loss1, loss8, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(eight.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-6)
  assert int(eight.step) == 3


def test_tables_split_over_a_model_axis_match_one_device(tiny_source):
  """DeepFM (every table, first-order ones too; cheap to compile twice) on a data=4,model=2 mesh."""
  one, loss1 = _train(tiny_source, jax.devices()[:1], name="deepfm")
  for rows in (None, optim.RowOptimizer("sgd")):
    split, loss_split = _train(tiny_source, jax.devices(), spec="data=4,model=2", rows=rows, name="deepfm")
    table = split.params["tables"]["item"]
    assert table.sharding.spec == jax.sharding.PartitionSpec("model", None)
    assert {s.data.shape[0] for s in table.addressable_shards} == {table.shape[0] // 2}  # half the rows each
    np.testing.assert_allclose(loss1, loss_split, rtol=1e-5)
    for k, a in one.params["tables"].items():  # the split tables carry padding rows past the vocabulary
      b = np.asarray(split.params["tables"][k])
      np.testing.assert_allclose(np.asarray(a), b[: a.shape[0]], rtol=2e-4, atol=2e-6, err_msg=k)
      assert np.all(b[a.shape[0] :] == b[a.shape[0] :])  # (finite)
    for a, b in zip(jax.tree.leaves(one.params["dense"]), jax.tree.leaves(split.params["dense"])):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-6)
