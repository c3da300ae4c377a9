"""MIAN on GroupLens MovieLens (ml-100k or ml-1m), a real public rating data set.

The data is not part of this repository: download ml-100k (or ml-1m) from
https://grouplens.org/datasets/movielens/ (research use, see its README), unpack it and point data.dir
at the folder, e.g. `--set data.dir=path/to/ml-100k`. It is converted once into sharded ArrayRecord
blocks (mian_jax/data/movielens.py) and cached. Labels: rating >= data.min_positive_rating (4); test
split: each user's last data.test_per_user ratings (10 here: with a single test rating per user the
gAUC is undefined, as no user would have both a positive and a negative). Converted shards are cached under $MIAN_JAX_CACHE or `data_cache/`.

Variants: "" (default) and "tiny" (a small model, one epoch: a run of seconds, for tests).
"""

from experiments._tiny import variant
from mian_jax.config import Config


def get_config(variant_name: str = "") -> Config:
  config = Config()
  config.data.source = "movielens"
  config.data.dir = "data/movielens-100k"
  config.data.max_len = 50
  config.data.block_size = 64
  config.data.test_per_user = 10
  config.model.name = "mian"
  config.model.embed_dim = 18
  config.train.batch_size = 256
  # Trained to convergence: up to 12 epochs, stopped when the validation AUC has not improved for 2
  # evaluations (one per epoch); the checkpoint with the best validation AUC is the one reported.
  config.train.epochs = 12
  config.train.early_stop_patience = 2
  config.train.learning_rate = 2e-3
  config.train.lr_schedule = "cosine"
  config.train.eval_batch_size = 1024
  return variant(config, "movielens", variant_name, max_len=10, block_size=16, batch_size=64, eval_batch_size=256)
