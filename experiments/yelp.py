"""Yelp review sequences in the BARS layout: the real behaviour data with a published reference.

    python3 ../shared/data/yelp/build.py data/yelp      # or any folder: --set data.dir=FOLDER
    python launch.py --experiment yelp [--model din]

The files (`train.csv`, `test.csv`: label,user_id,item_id,cate_id,item_history,cate_history) are what
the Yelp builder of the S3-Rec preprocessing writes; they are read by the Amazon converter's BARS layout
(mian_jax/data/amazon.py). Defaults are the protocol FuxiCTR's reference numbers were measured under
(`../shared/data/yelp/PEER.md`): embedding 18, the 50 most recent behaviours, the user id embedded,
MLP 200-80, batch 1024, Adam 1e-3 constant, evaluation after each epoch; beyond that protocol (3 epochs,
the best chosen on test: the `peer` sweep), runs train to convergence: up to 8 epochs, stopped when the
validation AUC has not improved for 2 epochs, the best on validation reported. Candidate = business +
category, behaviours = earlier businesses; no profile beyond the user id, no context fields.
MIAN is the package's default configuration (config.ModelConfig); the paper's is `--model mian_paper`.
Variant "tiny": a small model and small batches, for checking the machinery only.
"""

from experiments._tiny import variant
from mian_jax.config import Config


def get_config(variant_name: str = "") -> Config:
  config = Config()
  config.data.source = "amazon"
  config.data.dir = "data/yelp"
  config.data.max_len = 50
  config.data.block_size = 128
  config.data.embed_user_id = True
  config.model.name = "mian"
  config.model.embed_dim = 18
  config.model.mlp = (200, 80)
  config.train.batch_size = 1024
  config.train.epochs = 8
  config.train.early_stop_patience = 2
  config.train.learning_rate = 1e-3
  config.train.lr_schedule = "constant"
  config.train.eval_batch_size = 4096
  config.train.checkpoint_every = 500
  return variant(config, "yelp", variant_name, max_len=10, block_size=8, batch_size=32, eval_batch_size=256)
