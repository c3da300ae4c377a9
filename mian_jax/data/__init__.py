"""Data sets by name: `SOURCES[data.source]` is a `DataSource`, which owns every operation on its data:
where it caches (`cache_root`), building / opening it as a `pipeline.Source` (shards on disk + schema:
`open`), and encoding other files of its layout for --predict (`encode_records`). `source_for(cfg)` finds
one, `open_source(cfg)` opens it.

Converters are imported when their data set is opened: the converters' worker processes import this
package, and should not pay for grain or for the other converters.
"""

from __future__ import annotations

import abc
import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

from mian_jax.config import DataConfig
from mian_jax.errors import ConfigError, DataError
from mian_jax.schema import FeatureSchema

if TYPE_CHECKING:
  from mian_jax.data.pipeline import Source


def default_cache_root() -> str:
  """$MIAN_JAX_CACHE, else `data_cache` in the working directory: where converted data sets are cached
  (never the data folder: it may be shared or read-only)."""
  return os.environ.get("MIAN_JAX_CACHE") or "data_cache"


# data.* fields every data set reads (the pipeline, the trainer and every converter).
COMMON_FIELDS = (
  "source",
  "dir",
  "max_len",
  "block_size",
  "workers",
  "threads",
  "prefetch",
  "device_prefetch",
  "placement",
  "oov",
  "validation",
  "embed_user_id",
  "seed",
)


class DataSource(abc.ABC):
  """One data set (a `SOURCES` entry). Converted from files by default: cached under `default_cache_root()`,
  and --predict encodes files of the training layout with the training data's vocabularies. `data.dir` is
  its input folder: the files it converts, or (commercial) the folder its generated data lives in."""

  generated = False  # True: data.scale sizes the data set (resolved on CPU / accelerator by train.run)
  fields: tuple[str, ...] = ()  # the data.* fields it reads beyond COMMON_FIELDS

  def cache_root(self, cfg: DataConfig) -> str:
    """The folder its converted (or generated) data sets are cached in."""
    return default_cache_root()

  @abc.abstractmethod
  def open(self, cfg: DataConfig) -> "Source":
    """Builds (or reuses) the data set `cfg` describes."""

  def encode_records(self, cfg: DataConfig, trained: "Source", path: Path) -> Path:
    """The data set folder --predict scores for `path`: `path` itself when it is one (meta.json), else the
    data set its files encode to with the vocabularies of `trained` (the run's data set), cached next to it."""
    if (path / "meta.json").exists():
      return path
    if not path.exists():
      raise DataError(f"{path}: no such file or folder")
    return self._encode_files(cfg, trained, path)

  def _encode_files(self, cfg: DataConfig, trained: "Source", path: Path) -> Path:
    """`path` (a file or a folder of files in the training layout) -> its data set (the tabular encoder)."""
    from mian_jax.data import tabular  # here: see the module docstring

    files = (
      [str(path)]
      if path.is_file()
      else sorted(str(f) for f in path.iterdir() if f.is_file() and not f.name.startswith("."))
    )
    if not files:
      raise DataError(f"{path}: no files to score")
    options = tabular.Options.from_config(cfg)
    directory, _ = tabular.encode_records(trained.directory, files, str(trained.directory.parent), options.part_bytes)
    return directory


class Commercial(DataSource):
  """The generated commercial-scale set: generated into (and cached in) data.dir itself; --predict scores
  data set folders only."""

  generated = True
  fields = ("scale", "days", "test_days", "shard_samples")

  def cache_root(self, cfg: DataConfig) -> str:
    return cfg.dir

  def open(self, cfg: DataConfig) -> "Source":
    from mian_jax.data import commercial, pipeline  # here: see the module docstring

    if not 0 < cfg.scale <= 10:
      raise DataError(f"data.scale={cfg.scale} is out of range; use a value in (0, 10], 1.0 = full size")
    valid_days = 1 if cfg.validation == "holdout" else 0
    params = commercial.Params(
      scale=cfg.scale,
      seed=cfg.seed,
      max_len=cfg.max_len,
      days=cfg.days,
      test_days=cfg.test_days,
      block_size=cfg.block_size,
      shard_samples=cfg.shard_samples,
      valid_days=valid_days,
    )
    if not 0 < cfg.test_days < cfg.days - valid_days:
      raise DataError(
        f"data.test_days={cfg.test_days} must be between 1 and {cfg.days - valid_days - 1} (data.days "
        f"minus {valid_days} validation day{'s' if valid_days != 1 else ''} minus one training day)"
      )
    directory, meta = commercial.build(self.cache_root(cfg), params)
    return pipeline.Source(directory, _with_user_id(FeatureSchema.from_dict(meta["schema"]), cfg.embed_user_id), meta)

  def encode_records(self, cfg: DataConfig, trained: "Source", path: Path) -> Path:
    return path  # no raw-file layout to encode: open_records refuses a folder that is not a data set


def _with_user_id(schema: FeatureSchema, embed: bool) -> FeatureSchema:
  """The stored schema with the user-id field embedded or not, as data.embed_user_id says."""
  features = tuple(dataclasses.replace(f, embed=embed) if f.name == schema.user_key else f for f in schema.features)
  return dataclasses.replace(schema, features=features)


class MovieLens(DataSource):
  """GroupLens MovieLens (ml-100k / ml-1m); --predict also scores a GroupLens folder."""

  fields = ("min_positive_rating", "test_per_user")

  def open(self, cfg: DataConfig) -> "Source":
    from mian_jax.data import movielens, pipeline  # here: see the module docstring

    if cfg.test_per_user < 1:
      raise DataError(f"data.test_per_user={cfg.test_per_user} must be >= 1")
    if not 1 <= cfg.min_positive_rating <= 5:
      raise DataError(f"data.min_positive_rating={cfg.min_positive_rating} must be in 1..5 (MovieLens stars)")
    params = movielens.Params(
      max_len=cfg.max_len,
      block_size=cfg.block_size,
      min_positive_rating=cfg.min_positive_rating,
      test_per_user=cfg.test_per_user,
      seed=cfg.seed,
      valid_per_user=cfg.test_per_user if cfg.validation == "holdout" else 0,
    )
    directory, meta = movielens.build(cfg.dir, params, self.cache_root(cfg))
    return pipeline.Source(directory, _with_user_id(FeatureSchema.from_dict(meta["schema"]), cfg.embed_user_id), meta)

  def _encode_files(self, cfg: DataConfig, trained: "Source", path: Path) -> Path:
    from mian_jax.data import movielens  # here: see the module docstring

    return movielens.encode_records(trained.directory, str(path), str(trained.directory.parent))[0]


class Amazon(DataSource):
  """Amazon reviews (books, electronics) and the Yelp copy: raw dumps, DIEN or BARS layouts."""

  fields = ("max_bad_rows", "part_mb")

  def open(self, cfg: DataConfig) -> "Source":
    from mian_jax.data import amazon, pipeline, tabular  # here: see the module docstring

    directory, meta = amazon.build(cfg.dir, tabular.Options.from_config(cfg), self.cache_root(cfg))
    return pipeline.Source(directory, FeatureSchema.from_dict(meta["schema"]), meta)


class Custom(DataSource):
  """CSV / TSV / JSON lines / Parquet files described by a schema file (data.schema)."""

  fields = ("max_bad_rows", "part_mb", "validation_fraction", "schema")

  def open(self, cfg: DataConfig) -> "Source":
    from mian_jax.data import custom, pipeline, tabular  # here: see the module docstring

    directory, meta = custom.build(cfg.dir, cfg.schema, tabular.Options.from_config(cfg), self.cache_root(cfg))
    return pipeline.Source(directory, FeatureSchema.from_dict(meta["schema"]), meta)


SOURCES: dict[str, DataSource] = {
  "commercial": Commercial(),
  "movielens": MovieLens(),
  "amazon": Amazon(),
  "custom": Custom(),
}


def source_for(cfg: DataConfig) -> DataSource:
  if cfg.source not in SOURCES:
    raise DataError(f"data.source={cfg.source!r} is unknown; valid: {', '.join(sorted(SOURCES))}")
  return SOURCES[cfg.source]


def check_overrides(cfg: DataConfig, keys: list[str]) -> None:
  """ConfigError for a `--set data.X` that the chosen data set does not read (it would change nothing)."""
  reads = set(COMMON_FIELDS) | set(source_for(cfg).fields)
  for key in keys:
    field = key.split("=", 1)[0].strip().removeprefix("data.")
    if key.strip().startswith("data.") and field not in reads:
      others = sorted(name for name, s in SOURCES.items() if field in s.fields)
      raise ConfigError(
        f"--set {key.split('=', 1)[0].strip()}: data.source={cfg.source} does not read it"
        + (f" (only {', '.join(others)} does)" if others else "")
        + f"; drop it. It reads: {', '.join(sorted(reads - {'source'}))}"
      )


def open_source(cfg: DataConfig) -> "Source":
  return source_for(cfg).open(cfg)
