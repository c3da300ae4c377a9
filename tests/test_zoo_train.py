"""Every registered model learns through the trainer's own pieces (state from shapes, the jitted train
step with donation, the grain pipeline) on the tiny commercial data: its loss goes down and its test
AUC beats chance. One device, so that thirteen compilations stay cheap; launch.py runs of the zoo are
in test_sweep.py and test_e2e.py."""

import jax
import numpy as np
import pytest

import experiments
from mian_jax import models
from mian_jax.train import loop, partition, state as state_lib, step as step_lib

STEPS = 30


@pytest.mark.parametrize("name", models.names())
def test_model_learns_and_its_loss_goes_down(name, tiny_source):
  config = experiments.get_config("commercial:tiny")
  config.train.learning_rate = 1e-2
  mesh = partition.make_mesh(jax.devices()[:1])
  model = models.get(name, config.model)
  tx = loop.make_optimizer(config.train, STEPS)
  init = state_lib.make_init(model, tiny_source.schema, config.model.embed_dim, tx)
  state = partition.jit_init(init, mesh)(jax.random.key_data(jax.random.key(0)))
  train_step = partition.jit_train_step(
      step_lib.make_train_step(model, tiny_source.schema, tx, config.model.aux_loss_weight), mesh)
  it = loop.pipeline.train_iterator(tiny_source, batch_per_process=config.train.batch_size, seed=0,
                                    max_len=config.data.max_len)
  losses = []
  for _ in range(STEPS):
    state, metrics = train_step(state, partition.to_global(next(it), mesh))
    losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.05, losses
  eval_step = partition.jit_eval_step(step_lib.make_eval_step(model, tiny_source.schema), mesh)
  result = loop.evaluate(eval_step, state.params, tiny_source, config, mesh)
  assert result["auc"] > 0.5, result  # better than chance after a few steps
