"""Every registered model learns through the trainer's own pieces (state from shapes, the jitted train
step with donation, the grain pipeline) on the tiny commercial data: its loss goes down and its test
AUC beats chance. One device, so that thirteen compilations stay cheap (the ablations other than
mian_no_ibim skip the Transformer encoder, whose compilation `mian` pays once); launch.py runs of the zoo are
in test_sweep.py and test_e2e.py. DIEN's parts (dien_no_product, ...) are DIEN's own layers with one taken
away: `dien` learns here, and test_zoo_din_dien.py checks what each part reads."""

import numpy as np
import pytest

import experiments
from helpers import train_briefly
from mian_jax import models
from mian_jax.models import DIEN_PARTS

STEPS = 30


@pytest.mark.parametrize("name", [n for n in models.names() if n not in DIEN_PARTS])
def test_model_learns_and_its_loss_goes_down(name, tiny_source):
  config = experiments.get_config("commercial:tiny")
  config.train.learning_rate = 1e-2
  if name.startswith("mian_no_") and name != "mian_no_ibim":
    config.model.ibim_encoder = "none"  # the switched-off module is under test; `mian` covers the encoder
  losses, result = train_briefly(name, config, tiny_source, STEPS)
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.05, losses
  assert result["auc"] > 0.5, result  # better than chance after a few steps
