"""Every registered model learns through the trainer's own pieces (state from shapes, the jitted train
step with donation, the grain pipeline) on the tiny commercial data: its loss goes down and its test
AUC beats chance. One device, so that thirteen compilations stay cheap (the ablations other than
mian_no_ibim skip the Transformer encoder, whose compilation `mian` pays once); launch.py runs of the zoo are
in test_sweep.py and test_e2e.py."""

import numpy as np
import pytest

import experiments
from helpers import train_briefly
from mian_jax import models

STEPS = 30


@pytest.mark.parametrize("name", models.names())
def test_model_learns_and_its_loss_goes_down(name, tiny_source):
  config = experiments.get_config("commercial:tiny")
  config.train.learning_rate = 1e-2
  if name.startswith("mian_no_") and name != "mian_no_ibim":
    config.model.ibim_encoder = "none"  # the switched-off module is under test; `mian` covers the encoder
  losses, result = train_briefly(name, config, tiny_source, STEPS)
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.05, losses
  assert result["auc"] > 0.5, result  # better than chance after a few steps
