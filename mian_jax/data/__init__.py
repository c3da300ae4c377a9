"""Data sets by name: each turns a DataConfig into a `pipeline.Source` (shards on disk + schema).

Converters are imported when their data set is opened: the converters' worker processes import this
package, and should not pay for grain or for the other converters.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable

from mian_jax.config import DataConfig
from mian_jax.data.errors import DataError
from mian_jax.schema import FeatureSchema

if TYPE_CHECKING:
  from mian_jax.data.pipeline import Source


def _commercial(cfg: DataConfig) -> "Source":
  from mian_jax.data import commercial, pipeline

  if not 0 < cfg.scale <= 10:
    raise DataError(f"data.scale={cfg.scale} is out of range; use a value in (0, 10], 1.0 = full size")
  valid_days = 1 if cfg.validation == "holdout" else 0
  params = commercial.Params(scale=cfg.scale, seed=cfg.seed, max_len=cfg.max_len, days=cfg.days,
                             test_days=cfg.test_days, block_size=cfg.block_size, shard_samples=cfg.shard_samples,
                             valid_days=valid_days)
  if not 0 < cfg.test_days < cfg.days - valid_days:
    raise DataError(f"data.test_days={cfg.test_days} must be between 1 and {cfg.days - valid_days - 1} (data.days "
                    f"minus {valid_days} validation day{'s' if valid_days != 1 else ''} minus one training day)")
  directory, meta = commercial.build(cfg.dir, params)
  return pipeline.Source(directory, _with_user_id(FeatureSchema.from_dict(meta["schema"]), cfg.embed_user_id), meta)


def _with_user_id(schema: FeatureSchema, embed: bool) -> FeatureSchema:
  """The stored schema with the user-id field embedded or not, as data.embed_user_id says."""
  features = tuple(dataclasses.replace(f, embed=embed) if f.name == schema.user_key else f for f in schema.features)
  return dataclasses.replace(schema, features=features)


def _movielens(cfg: DataConfig) -> "Source":
  from mian_jax.data import movielens, pipeline

  if cfg.test_per_user < 1:
    raise DataError(f"data.test_per_user={cfg.test_per_user} must be >= 1")
  if not 1 <= cfg.min_positive_rating <= 5:
    raise DataError(f"data.min_positive_rating={cfg.min_positive_rating} must be in 1..5 (MovieLens stars)")
  params = movielens.Params(max_len=cfg.max_len, block_size=cfg.block_size, min_positive_rating=cfg.min_positive_rating,
                            test_per_user=cfg.test_per_user, seed=cfg.seed,
                            valid_per_user=cfg.test_per_user if cfg.validation == "holdout" else 0)
  directory, meta = movielens.build(cfg.dir, params)
  return pipeline.Source(directory, _with_user_id(FeatureSchema.from_dict(meta["schema"]), cfg.embed_user_id), meta)


def _amazon(cfg: DataConfig) -> "Source":
  from mian_jax.data import amazon, pipeline, tabular

  directory, meta = amazon.build(cfg.dir, tabular.Options.from_config(cfg))
  return pipeline.Source(directory, FeatureSchema.from_dict(meta["schema"]), meta)


def _custom(cfg: DataConfig) -> "Source":
  from mian_jax.data import custom, pipeline, tabular

  directory, meta = custom.build(cfg.dir, cfg.schema, tabular.Options.from_config(cfg))
  return pipeline.Source(directory, FeatureSchema.from_dict(meta["schema"]), meta)


SOURCES: dict[str, Callable[[DataConfig], "Source"]] = {
    "commercial": _commercial, "movielens": _movielens, "amazon": _amazon, "custom": _custom}


def open_source(cfg: DataConfig) -> "Source":
  if cfg.source not in SOURCES:
    raise DataError(f"data.source={cfg.source!r} is unknown; valid: {', '.join(sorted(SOURCES))}")
  return SOURCES[cfg.source](cfg)
