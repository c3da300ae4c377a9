"""What `books` and `electronics` share: Amazon review data in the DIEN, BARS or raw 2014 layout.

Defaults follow the paper and the DIEN reference: the 100 most recent behaviours, embedding width 18,
the user id embedded, Adam at 1e-3 with batch 128. Converted shards are cached under $MIAN_JAX_CACHE or
`data_cache/`. Variant "tiny": a small model and small batches (a seconds-long run on test files).
"""

from experiments._tiny import variant
from mian_jax.config import Config


def amazon_config(name: str, folder: str, variant_name: str) -> Config:
  config = Config()
  config.data.source = "amazon"
  config.data.dir = folder
  config.data.max_len = 100
  config.data.block_size = 32
  config.data.embed_user_id = True
  config.model.name = "mian"
  config.model.embed_dim = 18
  config.train.batch_size = 128
  config.train.epochs = 2
  config.train.learning_rate = 1e-3
  config.train.lr_schedule = "cosine"
  config.train.eval_batch_size = 1024
  return variant(config, name, variant_name, max_len=10, block_size=8, batch_size=32, eval_batch_size=256)
