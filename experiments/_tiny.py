"""The `tiny` size every experiment shares: every model of the zoo shrunk to a seconds-long CPU run."""

from mian_jax.config import Config


def shrink_models(config: Config) -> Config:
  m = config.model
  m.embed_dim, m.mlp, m.gim_dim = 4, (16, 8), 8
  m.cin_layers, m.cross_layers, m.attention_mlp = (8, 8), 2, (8, 4)
  config.train.epochs, config.train.log_every, config.train.checkpoint_every = 1, 5, 10
  return config


def variant(
  config: Config, experiment: str, name: str, max_len: int, block_size: int, batch_size: int, eval_batch_size: int
) -> Config:
  """Applies variant `name` ("" = none, "tiny" = the shrunk models on short histories and small batches)."""
  if name == "tiny":
    config.data.max_len, config.data.block_size = max_len, block_size
    shrink_models(config)
    config.train.batch_size, config.train.eval_batch_size = batch_size, eval_batch_size
  elif name:
    raise ValueError(f"unknown variant {name!r} of experiment {experiment}; valid: tiny")
  return config
