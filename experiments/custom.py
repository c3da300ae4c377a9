"""MIAN on your own CSV / TSV / Parquet files, described by a TOML schema file.

    python launch.py --experiment custom --set data.schema=my_schema.toml --set data.dir=path/to/files

The schema file maps columns to MIAN's four groups (mian_jax/data/custom.py documents every key);
`experiments/schemas/alimama.toml` is a worked example for the Alimama display-ad click rows
(Taobao, tiny_csv layout), the default here. Bad rows stop the conversion with file and line unless
data.max_bad_rows allows skipping them. Converted shards are cached under $MIAN_JAX_CACHE or
`data_cache/`.

Variants: "" (batch 1024, for real logs) and "tiny" (a small model and batch 32: trains on a few
hundred rows such as the Alimama samples, in seconds).
"""

from pathlib import Path

from experiments._tiny import variant
from mian_jax.config import Config

SCHEMAS = Path(__file__).parent / "schemas"


def get_config(variant_name: str = "") -> Config:
  config = Config()
  config.data.source = "custom"
  config.data.schema = str(SCHEMAS / "alimama.toml")
  config.data.dir = "data/alimama"
  config.data.max_len = 50
  config.data.block_size = 64
  config.model.name = "mian"
  config.model.embed_dim = 18
  config.train.batch_size = 1024
  config.train.epochs = 2
  config.train.learning_rate = 1e-3
  config.train.lr_schedule = "cosine"
  return variant(config, "custom", variant_name, max_len=10, block_size=8, batch_size=32, eval_batch_size=64)
