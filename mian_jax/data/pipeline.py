"""grain input pipelines over block records.

Training:  ArrayRecordDataSource (one record = one block of samples)
        -> MapDataset, seeded shuffle of blocks, reshuffled every epoch, repeated without end
        -> slice [process_index::process_count] (processes read disjoint blocks)
        -> batch k blocks and decode them together (one read call per block, vectorised decode)
        -> seeded permutation of the samples inside the batch (a shuffle buffer of k blocks)
        -> [start:] when resuming, then to_iter_dataset with prefetch threads, or `mp_prefetch` workers.
The position checkpoints store is the number of batches consumed and the global batch in blocks
(`TrainIterator.get_state()`). Because processes read the shuffled blocks round robin and each takes k
consecutive ones of its slice, global batch s is blocks [s*K, (s+1)*K) of the shuffled stream whatever
the number of processes: a position carries over to another process or device count unchanged, and to
another global batch when the blocks consumed are a whole number of new batches (`resume_from`).
Evaluation reads every block of a split once, in order, padding the last
batch with weight-0 rows; every process runs the same number of evaluation batches.
Values read as 0 under data.oov=map are counted in a `Counts` that the iterator owns
(`TrainIterator.counts`, `EvalIterator.counts`), filled as batches are consumed. Training batches are
assembled by grain, possibly in worker processes that cannot add to the parent's counter, so each grain
element is a (batch, per-batch counts) pair that `TrainIterator` unpacks: the batches callers see hold
only the data set's fields.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Iterator, Sequence

import grain
import numpy as np
from absl import flags
from array_record.python import array_record_module

from mian_jax.data import records
from mian_jax.errors import DataError  # noqa: F401  (re-exported: pipeline.DataError)
from mian_jax.schema import FeatureSchema


@dataclasses.dataclass(frozen=True)
class Source:
  """A data set on disk as the pipelines need it: its directory, schema and block sizes."""
  directory: Path
  schema: FeatureSchema
  meta: dict[str, Any]

  def paths(self, split: str) -> list[str]:
    return [str(self.directory / name) for name in self.meta["files"].get(split, [])]

  def blocks(self, split: str) -> list[int]:
    return self.meta["blocks"].get(split, [])  # data sets without a validation split have no "valid"

  def rows(self, split: str) -> int:
    return sum(self.blocks(split))

  def block_size(self) -> int:
    return max(self.blocks("train"))

  @property
  def group_key(self) -> str:
    """The batch field gAUC groups rows by (one group per user): the per-row group of the raw user key
    where the converter stores one (tabular data sets: `user_group`, named in stats["user_groups"], so
    users unseen in training stay apart instead of sharing OOV id 0), else the schema's user key (the
    generated and MovieLens sets, whose evaluated users all have ids of their own)."""
    field = self.meta.get("stats", {}).get("user_groups", {}).get("field")
    stored = {f.name for f in self.schema.features if f.kind == "categorical"}
    return field if field in stored else self.schema.user_key


class _Located:
  """The records of a split's shard files as one random-access source (what grain reads), each record
  returned with its index so that a failure can name the shard file and record; a file that cannot be
  opened or a record that cannot be read is a DataError saying which and how to fix it."""

  def __init__(self, src: Source, split: str):
    self.paths, counts = src.paths(split), []
    missing = [p for p in self.paths if not Path(p).exists()]
    if missing:
      raise DataError(f"{missing[0]} is missing; delete {src.directory} and rerun to regenerate the data")
    for path in self.paths:
      try:
        reader = array_record_module.ArrayRecordReader(path)
        counts.append(reader.num_records())
        reader.close()
      except Exception as e:
        raise DataError(f"{path}: cannot be opened ({_first_line(e)}); the shard is truncated or corrupt: delete "
                        f"{src.directory} and rerun to regenerate the data") from None
    self.ends = np.cumsum(counts)
    self.directory = src.directory
    self._source = grain.sources.ArrayRecordDataSource(self.paths)

  def __len__(self) -> int:
    return int(self.ends[-1]) if len(self.ends) else 0

  def where(self, index: int) -> tuple[str, int]:
    """(shard file, record in it) of global record `index`."""
    f = int(np.searchsorted(self.ends, index, side="right"))
    return self.paths[f], int(index - (self.ends[f - 1] if f else 0))

  def _fail(self, index: int, e: Exception) -> DataError:
    path, record = self.where(index)
    return DataError(f"{path} record {record}: cannot be read ({_first_line(e)}); the shard is truncated or corrupt: "
                     f"delete {self.directory} and rerun to regenerate the data")

  def __getitem__(self, index: int) -> tuple[int, bytes]:
    try:
      return index, self._source[index]
    except Exception as e:
      raise self._fail(index, e) from None

  def __getitems__(self, indices: Sequence[int]) -> list[tuple[int, bytes]]:
    try:
      return list(zip(indices, self._source.__getitems__(list(indices))))
    except Exception:
      return [self[i] for i in indices]  # one by one, so the error names the record that failed


def _first_line(e: Exception) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__


@dataclasses.dataclass
class Counts:
  """How many values were read as 0 under data.oov=map, by kind: ids outside their feature's vocabulary
  and non-finite numeric values (this process's reads)."""
  oov_ids: int = 0
  nonfinite: int = 0

  NAMES = {"oov_ids": "ids outside their vocabulary", "nonfinite": "non-finite numeric values"}

  def add(self, oov_ids: int = 0, nonfinite: int = 0) -> None:
    self.oov_ids += int(oov_ids)
    self.nonfinite += int(nonfinite)

  def as_dict(self) -> dict[str, int]:
    """The non-zero counts by their reported name (`mapped_values` in metrics and result.json); {} when
    nothing was read as 0."""
    return {name: getattr(self, field) for field, name in self.NAMES.items() if getattr(self, field)}


def _decode_checked(schema: FeatureSchema, max_len: int | None, oov: str, located: _Located,
                    item: tuple[int, bytes]) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """(block, [OOV ids, non-finite numeric values] in it): ids outside their vocabulary and non-finite
  numeric values become 0 and are counted (oov=map) or stop the run naming the shard file, record and
  feature (oov=error)."""
  index, blob = item
  try:
    block = records.decode_block(schema, blob, max_len)
  except records.RecordError as e:
    path, record = located.where(index)
    raise DataError(f"{path} record {record}: {e}; the shard does not match this data set's schema: delete "
                    f"{located.directory} and rerun to regenerate the data") from None
  counts = np.zeros(2, np.int64)
  for f in schema.features:
    values = block[f.name]
    bad = ~np.isfinite(values) if f.kind == "numeric" else (values < 0) | (values >= f.vocab_size)
    if not bad.any():
      continue
    if oov == "error":
      path, record = located.where(index)
      value = values[bad][0]
      what = (f"the non-finite value {value}" if f.kind == "numeric"
              else f"id {value} outside its vocabulary 0..{f.vocab_size - 1}")
      raise DataError(f"{path} record {record}: feature {f.name} holds {what}; regenerate the data, or set "
                      f"data.oov=map to read such values as OOV id 0 / 0.0 (counted)")
    block[f.name] = np.where(bad, 0, values).astype(values.dtype)
    counts[int(f.kind == "numeric")] += int(bad.sum())
  return block, counts


def _decode_many(schema: FeatureSchema, max_len: int, oov: str, located: _Located,
                 items: Sequence[tuple[int, bytes]]) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """One training batch as grain carries it: (the batch, its [OOV ids, non-finite values] counts)."""
  decoded = [_decode_checked(schema, max_len, oov, located, item) for item in items]
  return records.concat([block for block, _ in decoded]), np.sum([counts for _, counts in decoded], axis=0)


def _permute(seed: int, index: int, item: tuple[dict[str, np.ndarray], np.ndarray]
             ) -> tuple[dict[str, np.ndarray], np.ndarray]:
  batch, counts = item
  perm = np.random.default_rng([seed, index, 1]).permutation(len(batch["label"]))
  return {k: v[perm] for k, v in batch.items()}, counts


def steps_per_epoch(src: Source, batch_per_process: int, process_count: int) -> int:
  blocks_per_batch = batch_per_process // src.block_size()
  return len(src.blocks("train")) // process_count // blocks_per_batch


class TrainIterator:
  """Per-process training batches; `get_state()` is the position a checkpoint stores; `counts`: the values
  the batches returned so far read as 0 under data.oov=map."""

  def __init__(self, it: Iterator[tuple[dict[str, np.ndarray], np.ndarray]], start: int, blocks_per_batch: int):
    self._it, self.batches, self.blocks_per_batch = it, start, blocks_per_batch
    self.counts = Counts()

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch, (oov_ids, nonfinite) = next(self._it)  # grain's element: (batch, its counts); see the module docstring
    self.counts.add(oov_ids, nonfinite)
    self.batches += 1
    return batch

  def get_state(self) -> dict[str, int]:
    return {"batches": self.batches, "blocks_per_batch": self.blocks_per_batch}


def resume_from(state: dict[str, Any] | None, blocks_per_batch: int, reset: bool = False) -> int:
  """The batch to resume at, given a checkpoint's data position and this run's global batch in blocks.

  Same batch: the same index (any number of processes or devices). Another batch size: the blocks
  consumed must be a whole number of new batches, else DataError (no sample is skipped or repeated
  silently); `reset` starts the data order from its beginning instead.
  """
  if reset or not state:
    return 0
  if "batches" not in state:  # a grain iterator state (next_index) from before positions were mapped
    return int(state["next_index"])
  consumed = state["batches"] * state["blocks_per_batch"]
  if consumed % blocks_per_batch:
    raise DataError(
        f"the checkpoint's data position ({state['batches']} batches of {state['blocks_per_batch']} blocks) is not a "
        f"whole number of this run's batches of {blocks_per_batch} blocks, so resuming would skip or repeat samples; "
        f"use the checkpoint's train.batch_size and data.block_size, or --set train.reset_data_position=true "
        f"to restart the data order")
  return consumed // blocks_per_batch


def train_iterator(src: Source, *, batch_per_process: int, seed: int, max_len: int, process_index: int = 0,
                   process_count: int = 1, workers: int = 0, prefetch: int = 4, start: int = 0,
                   oov: str = "map") -> TrainIterator:
  """An endless iterator of per-process training batches (numpy dicts), from global batch `start`."""
  block = src.block_size()
  if batch_per_process % block:
    raise DataError(f"per-process batch {batch_per_process} is not a multiple of the data's block size {block}; "
                    f"set train.batch_size to a multiple of {block * process_count}")
  k = batch_per_process // block
  if len(src.blocks("train")) < k * process_count:
    raise DataError(f"{src.directory} holds {src.rows('train')} training samples, fewer than one batch; "
                    f"lower train.batch_size or raise data.scale")
  located = _Located(src, "train")
  ds = grain.MapDataset.source(located).shuffle(seed=seed).repeat(None)
  ds = ds[process_index::process_count]
  ds = ds.batch(k, drop_remainder=True, batch_fn=functools.partial(_decode_many, src.schema, max_len, oov, located))
  ds = ds.map_with_index(functools.partial(_permute, seed))  # the index: the global batch number
  if start:
    ds = ds[start:]
  if workers > 0:
    _absl_flags_parsed()  # grain's worker processes read absl flags, which a plain script never parses
    it_ds = ds.to_iter_dataset().mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  else:
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch))
  return TrainIterator(iter(it_ds), start, k * process_count)


def _absl_flags_parsed() -> None:
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def batch_sources(src: Source, seed: int, batch_index: int, blocks_per_batch: int) -> list[tuple[str, int]]:
  """(shard file, record) of every block in global training batch `batch_index` (any process count)."""
  located = _Located(src, "train")
  order = grain.MapDataset.range(len(located)).shuffle(seed=seed).repeat(None)
  return [located.where(int(order[batch_index * blocks_per_batch + j])) for j in range(blocks_per_batch)]


class EvalIterator:
  """Per-process evaluation batches (`eval_batches`); `counts`: the values the blocks read so far held that
  data.oov=map read as 0 (complete once every batch is consumed)."""

  def __init__(self, it: Iterator[dict[str, np.ndarray]], counts: Counts):
    self._it, self.counts = it, counts

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._it)


def eval_batches(src: Source, split: str, *, rows_per_process: int, max_len: int, process_index: int = 0,
                 process_count: int = 1, oov: str = "map") -> tuple[int, EvalIterator]:
  """(number of batches, iterator) over every row of `split` held by this process, in order.

  Blocks are dealt to processes round robin; each process pads to the same number of batches. Values
  read as 0 under data.oov=map are counted in the iterator's `counts`.
  """
  sizes = src.blocks(split)
  mine = list(range(process_index, len(sizes), process_count))
  counts = [sum(sizes[i::process_count]) for i in range(process_count)]
  num_batches = max(1, -(-max(counts) // rows_per_process))
  source = _Located(src, split)
  decode = functools.partial(_decode_checked, src.schema, max_len, oov, source)
  counts = Counts()

  def gen() -> Iterator[dict[str, np.ndarray]]:
    pending: list[dict[str, np.ndarray]] = []
    have, emitted = 0, 0
    for start in range(0, len(mine), 64):  # one read call for 64 blocks
      for item in source.__getitems__(mine[start:start + 64]):
        block, (oov_ids, nonfinite) = decode(item)
        counts.add(oov_ids, nonfinite)
        pending.append(block)
        have += len(block["label"])
        while have >= rows_per_process:
          merged = records.concat(pending)
          yield {k: v[:rows_per_process] for k, v in merged.items()}
          emitted += 1
          pending = [{k: v[rows_per_process:] for k, v in merged.items()}]
          have -= rows_per_process
    template, _ = decode(source[0])  # only its fields and dtypes: not counted
    empty = {k: v[:0] for k, v in template.items()}
    while emitted < num_batches:
      yield records.pad_rows(records.concat(pending + [empty]), rows_per_process)
      pending, emitted = [], emitted + 1

  return num_batches, EvalIterator(gen(), counts)
