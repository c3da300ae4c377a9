"""Data-parallel training on 8 fake CPU devices matches one device; the old state is donated."""

import jax
import numpy as np
import optax

from mian_jax import models
from mian_jax.config import ModelConfig
from mian_jax.data import pipeline
from mian_jax.train import optim, partition, state as state_lib, step as step_lib


def _train(source, devices, steps=3):
  mesh = partition.make_mesh(devices)
  cfg = ModelConfig(embed_dim=4, gim_dim=8, mlp=(16, 8))
  model = models.get("mian", cfg)
  tx = optim.Optimizer(optax.sgd(0.5), None, optax.constant_schedule(0.5))  # plain SGD: Adam would magnify float-summation-order noise in near-zero gradients
  init = state_lib.make_init(model, source.schema, cfg.embed_dim, tx)
  state = partition.jit_init(init, mesh)(jax.random.key_data(jax.random.key(0)))
  train_step = partition.jit_train_step(step_lib.make_train_step(model, source.schema, tx), mesh)
  it = pipeline.train_iterator(source, batch_per_process=64, seed=0, max_len=10)
  losses = []
  for _ in range(steps):
    old = state
    state, metrics = train_step(state, partition.to_global(next(it), mesh))
    losses.append(float(metrics["loss"]))
  assert jax.tree.leaves(old.params)[0].is_deleted()  # donated: the step reused the old buffers
  return state, losses


def test_eight_devices_match_one(tiny_source):
  assert jax.device_count() == 8
  one, loss1 = _train(tiny_source, jax.devices()[:1])
  eight, loss8 = _train(tiny_source, jax.devices())
  batch_leaf = jax.tree.leaves(eight.params)[0]
  assert len(batch_leaf.sharding.device_set) == 8
  np.testing.assert_allclose(loss1, loss8, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(eight.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-6)
  assert int(eight.step) == 3
