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
import os
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import grain
import numpy as np
from grain.experimental import index_shuffle
from absl import flags
from array_record.python import array_record_module

from mian_jax.data import records
from mian_jax.data.ahead import Ahead
from mian_jax.data.memory import keep_freed_memory
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
  opened or a record that cannot be read is a DataError saying which and how to fix it.

  Records are read with one ArrayRecordReader per shard file, shared by the decoding threads (the reader
  is thread-safe), and a batch's records of one file in one call. grain's ArrayRecordDataSource would
  start a thread pool for every call (one thread per file a batch touches): measured, that made reading
  ~3x slower than the reads themselves."""

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
        raise DataError(
          f"{path}: cannot be opened ({_first_line(e)}); the shard is truncated or corrupt: delete "
          f"{src.directory} and rerun to regenerate the data"
        ) from None
    self.ends = np.cumsum(counts, dtype=np.int64)
    self.directory = src.directory
    self._readers: list[Any] = [None] * len(self.paths)
    self._lock = threading.Lock()

  def __getstate__(self):  # grain's worker processes open their own readers
    return {k: v for k, v in self.__dict__.items() if k not in ("_readers", "_lock")}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._readers, self._lock = [None] * len(self.paths), threading.Lock()

  def _reader(self, f: int):
    if self._readers[f] is None:
      with self._lock:
        if self._readers[f] is None:
          self._readers[f] = array_record_module.ArrayRecordReader(
            self.paths[f], options="readahead_buffer_size:0", file_reader_buffer_size=32768
          )
    return self._readers[f]

  def __len__(self) -> int:
    return int(self.ends[-1]) if len(self.ends) else 0

  def where(self, index: int) -> tuple[str, int]:
    """(shard file, record in it) of global record `index`."""
    f = int(np.searchsorted(self.ends, index, side="right"))
    return self.paths[f], int(index - (self.ends[f - 1] if f else 0))

  def _fail(self, index: int, e: Exception) -> DataError:
    path, record = self.where(index)
    return DataError(
      f"{path} record {record}: cannot be read ({_first_line(e)}); the shard is truncated or corrupt: "
      f"delete {self.directory} and rerun to regenerate the data"
    )

  def _read(self, indices: Sequence[int]) -> list[bytes]:
    """The records `indices` (global numbers), one read call per shard file they are in."""
    keys = np.asarray(indices, np.int64)
    if keys.size and (keys.min() < 0 or keys.max() >= len(self)):
      raise IndexError(f"record {int(keys.max() if keys.max() >= len(self) else keys.min())} of {len(self)}")
    files = np.searchsorted(self.ends, keys, side="right")
    out: list[bytes] = [b""] * len(keys)
    for f in np.unique(files).tolist():
      at = np.flatnonzero(files == f)
      positions = keys[at] - (self.ends[f - 1] if f else 0)
      for i, blob in zip(at.tolist(), self._reader(f).read(positions.tolist())):
        out[i] = blob
    return out

  def __getitem__(self, index: int) -> tuple[int, bytes]:
    try:
      return index, self._read([index])[0]
    except Exception as e:
      raise self._fail(index, e) from None

  def __getitems__(self, indices: Sequence[int]) -> list[tuple[int, bytes]]:
    try:
      return list(zip(indices, self._read(indices)))
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


def _decode_checked(
  schema: FeatureSchema, max_len: int | None, oov: str, located: _Located, item: tuple[int, bytes]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """(block, [OOV ids, non-finite numeric values] in it): ids outside their vocabulary and non-finite
  numeric values become 0 and are counted (oov=map) or stop the run naming the shard file, record and
  feature (oov=error)."""
  index, blob = item
  try:
    block = records.decode_block(schema, blob, max_len)
  except records.RecordError as e:
    path, record = located.where(index)
    raise DataError(
      f"{path} record {record}: {e}; the shard does not match this data set's schema: delete "
      f"{located.directory} and rerun to regenerate the data"
    ) from None
  counts = np.zeros(2, np.int64)
  for f in schema.features:
    values = block[f.name]
    bad = ~np.isfinite(values) if f.kind == "numeric" else (values < 0) | (values >= f.vocab_size)
    if not bad.any():
      continue
    if oov == "error":
      path, record = located.where(index)
      value = values[bad][0]
      what = (
        f"the non-finite value {value}"
        if f.kind == "numeric"
        else f"id {value} outside its vocabulary 0..{f.vocab_size - 1}"
      )
      raise DataError(
        f"{path} record {record}: feature {f.name} holds {what}; regenerate the data, or set "
        f"data.oov=map to read such values as OOV id 0 / 0.0 (counted)"
      )
    block[f.name] = np.where(bad, 0, values).astype(values.dtype)
    counts[int(f.kind == "numeric")] += int(bad.sum())
  return block, counts


def _checked(
  schema: FeatureSchema,
  max_len: int,
  oov: str,
  located: _Located,
  items: Sequence[tuple[int, bytes]],
  batch: dict[str, np.ndarray],
) -> np.ndarray:
  """[OOV ids, non-finite numeric values] in a decoded batch of the blocks `items`, set to 0 in `batch`
  (oov=map); with oov=error the first bad value stops the run, named by `_decode_checked` block by block
  (the same record, feature and value whatever the batch's row order)."""
  counts = np.zeros(2, np.int64)
  for f in schema.features:
    values = batch[f.name]
    if f.kind == "numeric":
      if np.isfinite(values).all():
        continue
      bad = ~np.isfinite(values)
    else:
      if not values.size or (values.max() < f.vocab_size and values.min() >= 0):
        continue
      bad = (values < 0) | (values >= f.vocab_size)
    if oov == "error":
      for item in items:
        _decode_checked(schema, max_len, oov, located, item)
    batch[f.name] = np.where(bad, 0, values).astype(values.dtype)
    counts[int(f.kind == "numeric")] += int(bad.sum())
  return counts


def _decode_batch(
  schema: FeatureSchema,
  max_len: int,
  oov: str,
  located: _Located,
  seed: int | None,
  index: int,
  items: Sequence[tuple[int, bytes]],
) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """The blocks `items` as one batch, as grain carries it: (the batch, its [OOV ids, non-finite values]
  counts). Training (`seed` given) takes the rows in the seeded permutation of global batch `index`
  (a shuffle buffer of k blocks), applied inside the decode's gathers rather than by a copy."""
  order = None if seed is None else (lambda rows: np.random.default_rng([seed, index, 1]).permutation(rows))
  try:
    batch = records.decode_blocks(schema, [blob for _, blob in items], max_len, order)
  except records.RecordError as e:
    path, record = located.where(items[getattr(e, "block", 0)][0])
    raise DataError(
      f"{path} record {record}: {e}; the shard does not match this data set's schema: delete "
      f"{located.directory} and rerun to regenerate the data"
    ) from None
  return batch, _checked(schema, max_len, oov, located, items, batch)


def _read_batch(
  schema: FeatureSchema, max_len: int, oov: str, located: _Located, seed: int | None, index: int, indices: Sequence[int]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """Reads the blocks `indices` in one call and decodes them as `_decode_batch` does."""
  return _decode_batch(schema, max_len, oov, located, seed, index, located.__getitems__([int(i) for i in indices]))


@dataclasses.dataclass(frozen=True)
class BlockOrder:
  """Which blocks make up each global training batch: the records shuffled with grain's index_shuffle,
  reshuffled every epoch (epoch e uses seed + e), dealt to processes round robin, k consecutive ones of a
  process's share per batch. The same order as grain's
  `MapDataset.range(n).shuffle(seed).repeat(None)[process_index::process_count].batch(k)` (a test holds
  them equal), computed directly: grain's per-element path cost ~25 us a block under the GIL."""

  records: int  # n
  seed: int
  k: int
  process_index: int = 0
  process_count: int = 1

  def __call__(self, batch: int) -> list[int]:
    return [self.position(self.process_index + (batch * self.k + m) * self.process_count) for m in range(self.k)]

  def position(self, g: int) -> int:
    """The record at position `g` of the endless shuffled stream (all processes' blocks together)."""
    epoch, i = divmod(g, self.records)
    return index_shuffle(i, self.records - 1, (self.seed + epoch) % 2**32, 4)  # positional: 1.4x faster


def _train_batch(
  schema: FeatureSchema, max_len: int, oov: str, located: _Located, seed: int, order: BlockOrder, batch: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """Global training batch `batch` of this process: its blocks read and decoded, its rows in the batch's
  seeded order."""
  return _read_batch(schema, max_len, oov, located, seed, batch, order(batch))


def steps_per_epoch(src: Source, batch_per_process: int, process_count: int) -> int:
  blocks_per_batch = batch_per_process // src.block_size()
  return len(src.blocks("train")) // process_count // blocks_per_batch


class TrainIterator:
  """Per-process training batches; `get_state()` is the position a checkpoint stores; `counts`: the values
  the batches returned so far read as 0 under data.oov=map. With `place` (a batch -> device arrays
  function, partition.to_global) the batches are placed on the devices `ahead` batches before the caller
  asks for them, in a background thread; the position and the counts still count only the batches
  returned."""

  def __init__(
    self,
    it: Iterator[tuple[dict[str, np.ndarray], np.ndarray]],
    start: int,
    blocks_per_batch: int,
    place: Callable[[dict[str, np.ndarray]], Any] | None = None,
    ahead: int = 2,
  ):
    self.batches, self.blocks_per_batch = start, blocks_per_batch
    self.counts = Counts()
    self._ahead = None
    if place is not None and ahead > 0:
      self._it = self._ahead = Ahead(
        ((place(batch), counts) for batch, counts in it), ahead, "mian_jax-device-prefetch"
      )
    elif place is not None:
      self._it = ((place(batch), counts) for batch, counts in it)
    else:
      self._it = it

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, Any]:
    batch, (oov_ids, nonfinite) = next(self._it)  # grain's element: (batch, its counts); see the module docstring
    self.counts.add(oov_ids, nonfinite)
    self.batches += 1
    return batch

  def take(self, steps: int) -> tuple[Any, ...]:
    """The next `steps` batches (the input of one train call, Run.train_call)."""
    return tuple(next(self) for _ in range(steps))

  def get_state(self) -> dict[str, int]:
    return {"batches": self.batches, "blocks_per_batch": self.blocks_per_batch}

  def close(self) -> None:
    """Stops the placing thread (a no-op without one)."""
    if self._ahead is not None:
      self._ahead.close()


def position_problem(state: Any) -> str | None:
  """What is wrong with a checkpoint's data position (`TrainIterator.get_state()`, or the older grain
  iterator state with `next_index`), or None: counts must be whole numbers in range."""
  if state is None:
    return None
  if not isinstance(state, dict):
    return f"its data position is not a mapping ({type(state).__name__})"
  if "batches" not in state and "next_index" in state:
    fields = {"next_index": 0}
  else:
    fields = {"batches": 0, "blocks_per_batch": 1}
  for key, low in fields.items():
    value = state.get(key)
    if type(value) is not int or not low <= value < 1 << 62:
      return f"its data position holds {key}={value!r} (a whole number >= {low} was expected)"
  return None


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
      f"to restart the data order"
    )
  return consumed // blocks_per_batch


_ENDLESS = 1 << 62  # training batches: a MapDataset range that never ends


DEFAULT_THREADS = 4


def default_threads() -> int:
  """data.threads=0: one decoding thread per host core, at most DEFAULT_THREADS. The decode's gathers and
  copies release the GIL, but ArrayRecord's read and the Python between them hold it: on a 16-core H200
  host 4 threads gave 1.97M samples/s, 8 gave 1.44M and 16 1.33M (README, "The input path")."""
  return max(1, min(os.cpu_count() or 1, DEFAULT_THREADS))


def blocks_per_process_batch(src: Source, batch_per_process: int, process_count: int) -> int:
  """The blocks in one process's training batch; DataError when the batch is not whole blocks or the split
  holds less than one global batch."""
  block = src.block_size()
  if batch_per_process % block:
    raise DataError(
      f"per-process batch {batch_per_process} is not a multiple of the data's block size {block}; "
      f"set train.batch_size to a multiple of {block * process_count}"
    )
  k = batch_per_process // block
  if len(src.blocks("train")) < k * process_count:
    raise DataError(
      f"{src.directory} holds {src.rows('train')} training samples, fewer than one batch; "
      f"lower train.batch_size or raise data.scale"
    )
  return k


def train_iterator(
  src: Source,
  *,
  batch_per_process: int,
  seed: int,
  max_len: int,
  process_index: int = 0,
  process_count: int = 1,
  workers: int = 0,
  threads: int = 0,
  prefetch: int = 4,
  start: int = 0,
  oov: str = "map",
  place: Callable[[dict[str, np.ndarray]], Any] | None = None,
  device_prefetch: int = 2,
) -> TrainIterator:
  """An endless iterator of per-process training batches (numpy dicts, or what `place` makes of them,
  `device_prefetch` batches ahead), from global batch `start`. Batches are decoded by `threads` threads
  (0 = default_threads()), or by `workers` processes when workers > 0."""
  k = blocks_per_process_batch(src, batch_per_process, process_count)
  keep_freed_memory()
  located = _Located(src, "train")
  order = BlockOrder(len(located), seed, k, process_index, process_count)
  # Element i: global batch start + i (endless), read with one call per shard file and decoded in one go.
  ds = grain.MapDataset.range(start, _ENDLESS).map(
    functools.partial(_train_batch, src.schema, max_len, oov, located, seed, order)
  )
  if workers > 0:
    _absl_flags_parsed()  # grain's worker processes read absl flags, which a plain script never parses
    it_ds = ds.to_iter_dataset().mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  else:
    threads = threads or default_threads()
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(prefetch, threads)))
  return TrainIterator(iter(it_ds), start, k * process_count, place, device_prefetch)


def _absl_flags_parsed() -> None:
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def batch_sources(src: Source, seed: int, batch_index: int, blocks_per_batch: int) -> list[tuple[str, int]]:
  """(shard file, record) of every block in global training batch `batch_index` (any process count)."""
  located = _Located(src, "train")
  return [located.where(i) for i in BlockOrder(len(located), seed, blocks_per_batch)(batch_index)]


class EvalIterator:
  """Per-process evaluation batches (`eval_batches`); `counts`: the values the blocks read so far held that
  data.oov=map read as 0 (complete once every batch is consumed)."""

  def __init__(self, it: Iterator[Any], counts: Counts, ahead: Ahead | None = None):
    self._it, self.counts, self._ahead = it, counts, ahead

  def __iter__(self):
    return self

  def __next__(self) -> Any:
    return next(self._it)

  def close(self) -> None:
    if self._ahead is not None:
      self._ahead.close()


EVAL_BLOCKS = 64  # blocks decoded together by one evaluation thread


def eval_batches(
  src: Source,
  split: str,
  *,
  rows_per_process: int,
  max_len: int,
  process_index: int = 0,
  process_count: int = 1,
  oov: str = "map",
  threads: int = 0,
  place: Callable[[dict[str, np.ndarray]], Any] | None = None,
  device_prefetch: int = 2,
) -> tuple[int, EvalIterator]:
  """(number of batches, iterator) over every row of `split` held by this process, in order: numpy
  dicts, or what `place` makes of them, `device_prefetch` batches ahead.

  Blocks are dealt to processes round robin; each process pads to the same number of batches. Chunks of
  EVAL_BLOCKS blocks are decoded by `threads` threads (0 = default_threads()), in order. Values read as 0
  under data.oov=map are counted in the iterator's `counts`.
  """
  keep_freed_memory()
  num_batches = eval_batch_count(src, split, rows_per_process, process_count)
  source = _Located(src, split)
  counts = Counts()
  mine = range(process_index, len(source), process_count)
  chunks = grain.MapDataset.range(-(-len(mine) // EVAL_BLOCKS)).map(
    lambda c: _read_batch(src.schema, max_len, oov, source, None, 0, mine[c * EVAL_BLOCKS : (c + 1) * EVAL_BLOCKS])
  )
  threads = threads or default_threads()
  decoded = chunks.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(threads, 2)))

  def gen() -> Iterator[dict[str, np.ndarray]]:
    pending: list[dict[str, np.ndarray]] = []
    have, emitted = 0, 0
    for chunk, (oov_ids, nonfinite) in decoded:
      counts.add(oov_ids, nonfinite)
      pending.append(chunk)
      have += len(chunk["label"])
      while have >= rows_per_process:
        batch, pending = _split_rows(pending, rows_per_process)
        have -= rows_per_process
        emitted += 1
        yield batch
    template, _ = _decode_checked(src.schema, max_len, "map", source, source[0])  # only its fields and dtypes
    empty = {k: v[:0] for k, v in template.items()}
    while emitted < num_batches:
      yield records.pad_rows(records.concat(pending + [empty]), rows_per_process)
      pending, emitted = [], emitted + 1

  if place is None:
    return num_batches, EvalIterator(gen(), counts)
  if device_prefetch > 0:
    ahead = Ahead(map(place, gen()), device_prefetch, "mian_jax-eval-prefetch")
    return num_batches, EvalIterator(ahead, counts, ahead)
  return num_batches, EvalIterator(map(place, gen()), counts)


def eval_batch_count(src: Source, split: str, rows_per_process: int, process_count: int = 1) -> int:
  """Evaluation batches of `split` every process runs: enough for the process holding the most rows."""
  sizes = src.blocks(split)
  per_process = [sum(sizes[i::process_count]) for i in range(process_count)]
  return max(1, -(-max(per_process) // rows_per_process))


def _split_rows(
  pieces: list[dict[str, np.ndarray]], rows: int
) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
  """(the first `rows` rows of the pieces together, the pieces left): views when one piece holds them."""
  first = pieces[0]
  if len(first["label"]) >= rows:
    rest = {k: v[rows:] for k, v in first.items()}
    return {k: v[:rows] for k, v in first.items()}, ([rest] if len(rest["label"]) else []) + pieces[1:]
  taken, have, i = [], 0, 0
  while have < rows:
    taken.append(pieces[i])
    have += len(pieces[i]["label"])
    i += 1
  merged = records.concat(taken)
  rest = {k: v[rows:] for k, v in merged.items()}
  return {k: v[:rows] for k, v in merged.items()}, ([rest] if len(rest["label"]) else []) + pieces[i:]
