"""The `tiny` size every experiment shares: every model of the zoo shrunk to a seconds-long CPU run."""

from mian_jax.config import Config


def shrink_models(config: Config) -> Config:
  m = config.model
  m.embed_dim, m.mlp, m.gim_dim = 4, (16, 8), 8
  m.cin_layers, m.cross_layers, m.attention_mlp = (8, 8), 2, (8, 4)
  config.train.epochs, config.train.log_every, config.train.checkpoint_every = 1, 5, 10
  return config
