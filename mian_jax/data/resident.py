"""Splits held in device memory (data.placement=device): decoded once, every batch gathered inside the step.

`load` reads the blocks a process needs of a split once (chunks of blocks decoded by threads, in order) into
columns in their stored narrow types: `label` u8 [N], each scalar field [N], `hist_len` (the stored history
length) [N], `start` int32 [N] (where a row's history begins in its behaviour fields) and each behaviour field
ragged [V]. Ids outside their vocabulary and non-finite numbers are found there, once: data.oov=error stops
the load naming the shard file, record and feature (the host path's words, `pipeline._decode_checked`);
data.oov=map sets them to 0 and counts them per block, so that a batch's counts are the sums of its blocks'
(the host path's counts, batch by batch). Only values a batch can show count: the most recent data.max_len of
each history, as the host decode keeps.

`train/on_device.py` puts one copy of those columns on every device of the process and gathers batches from
them inside the jitted step, to the bit the batches the host path makes (`tests/test_resident.py`).

Which rows: training batch s of a process is its blocks `BlockOrder(s)` in that order, each block's rows in
stored order, then the batch's seeded permutation (`train_rows`); evaluation batch b is rows [bR, (b+1)R) of
the process's blocks `process::processes` in order. With several processes a process holds the training
blocks it reads in the epochs the run covers (every block is reshuffled to a new process each epoch, so a
run of several epochs holds most of the split) and the evaluation blocks it evaluates.
"""

from __future__ import annotations

import concurrent.futures as futures
import dataclasses
import itertools
import os
from typing import Any, Callable, Sequence

import numpy as np

from mian_jax.data import records
from mian_jax.data.ahead import Ahead
from mian_jax.data.pipeline import EVAL_BLOCKS, BlockOrder, Counts, Source, _decode_checked, _Located, default_threads
from mian_jax.errors import DataError
from mian_jax.schema import FeatureSchema


@dataclasses.dataclass
class Held:
  """A process's blocks of one split as host columns (see the module docstring)."""

  split: str
  columns: dict[str, np.ndarray]
  block_start: np.ndarray  # [blocks of the split] first row of each held block, -1 where not held
  block_rows: np.ndarray  # [blocks of the split] rows of each block
  block_counts: np.ndarray  # [blocks of the split, 2] values read as 0 (OOV ids, non-finite) in each held block
  rows: int

  def nbytes(self) -> int:
    return sum(v.nbytes for v in self.columns.values())

  def counts(self, blocks: Sequence[int] | None = None) -> Counts:
    """The values read as 0 in `blocks` (None: every held block)."""
    c = self.block_counts if blocks is None else self.block_counts[np.asarray(blocks, np.int64)]
    oov_ids, nonfinite = c.sum(axis=0).tolist() if len(c) else (0, 0)
    return Counts(int(oov_ids), int(nonfinite))


def _check(
  schema: FeatureSchema,
  max_len: int,
  oov: str,
  located: _Located,
  indices: Sequence[int],
  blobs: Sequence[bytes],
  cols: dict[str, np.ndarray],
  n: np.ndarray,
) -> np.ndarray:
  """[blocks, 2] counts of values read as 0 in the chunk (set to 0 in `cols`), or the host path's DataError
  (oov=error) for the first block that holds one."""
  counts = np.zeros((len(n), 2), np.int64)
  block_of_row = np.repeat(np.arange(len(n)), n)
  lengths = cols["hist_len"].astype(np.int64)
  kept_value = None
  for f in schema.features:
    values = cols[f.name]
    if f.kind == "numeric":
      bad = ~np.isfinite(values)
    elif values.size and (values.max() >= f.vocab_size or values.min() < 0):
      bad = (values >= f.vocab_size) | (values < 0)
    else:
      continue
    if f.kind == "sequence":
      if kept_value is None:  # the most recent max_len behaviours of each row: what a decoded batch shows
        row_of_value = np.repeat(np.arange(len(lengths)), lengths)
        from_end = np.cumsum(lengths)[row_of_value] - np.arange(len(row_of_value))  # 1 = the most recent
        kept_value = from_end <= max_len
      counted, rows = bad & kept_value, row_of_value
    else:
      counted, rows = bad, np.arange(len(values))
    if not counted.any():
      continue
    if oov == "error":
      first = int(block_of_row[rows[np.flatnonzero(counted)[0]]])
      _decode_checked(schema, max_len, "error", located, (indices[first], blobs[first]))
      raise DataError(f"feature {f.name}: a bad value that the block check did not name")  # not reached
    values[bad] = 0
    np.add.at(counts[:, int(f.kind == "numeric")], block_of_row[rows[counted]], 1)
  return counts


def _chunk(schema: FeatureSchema, max_len: int, oov: str, located: _Located, indices: Sequence[int]):
  items = located.__getitems__(list(indices))
  blobs = [blob for _, blob in items]
  try:
    cols, n = records.stored_columns(schema, blobs)
  except records.RecordError as e:
    path, record = located.where(indices[getattr(e, "block", 0)])
    raise DataError(
      f"{path} record {record}: {e}; the shard does not match this data set's schema: delete "
      f"{located.directory} and rerun to regenerate the data"
    ) from None
  return cols, n, _check(schema, max_len, oov, located, indices, blobs, cols, n)


def load(src: Source, split: str, blocks: Sequence[int], *, max_len: int, oov: str = "map", threads: int = 0) -> Held:
  """The blocks `blocks` of `split` (record numbers, held in this order) as host columns. Chunks of
  EVAL_BLOCKS blocks are read and decoded by `threads` threads (0 = default_threads()); the host holds the
  decoded chunks (the columns' own size) and, while a column is joined, one more copy of that column."""
  located = _Located(src, split)
  sizes = np.asarray(src.blocks(split), np.int64)
  blocks = np.asarray(blocks, np.int64)
  chunks = [blocks[i : i + EVAL_BLOCKS].tolist() for i in range(0, len(blocks), EVAL_BLOCKS)]
  with futures.ThreadPoolExecutor(threads or default_threads(), thread_name_prefix="mian_jax-load") as pool:
    parts = list(pool.map(lambda c: _chunk(src.schema, max_len, oov, located, c), chunks))
  block_counts = np.zeros((len(sizes), 2), np.int64)
  block_start = np.full(len(sizes), -1, np.int64)
  if parts:
    n = np.concatenate([p[1] for p in parts])
    block_counts[blocks] = np.concatenate([p[2] for p in parts])
  else:
    n = np.zeros(0, np.int64)
  block_start[blocks] = np.cumsum(n) - n
  names = list(parts[0][0]) if parts else _empty_columns(src.schema)
  columns: dict[str, np.ndarray] = {}
  for name in names:  # joined one column at a time, each chunk's piece dropped as it is copied
    columns[name] = np.concatenate([p[0].pop(name) for p in parts]) if parts else _empty_columns(src.schema)[name]
  lengths = columns["hist_len"].astype(np.int64)
  ends = np.cumsum(lengths)
  if ends.size and ends[-1] >= np.iinfo(np.int32).max:
    raise DataError(
      f"{src.directory} {split}: {int(ends[-1]):,} behaviours are more than data.placement=device "
      f"indexes (2^31 per process); set data.placement=host"
    )
  columns["start"] = (ends - lengths).astype(np.int32)
  return Held(split, columns, block_start, sizes, block_counts, int(n.sum()))


def _empty_columns(schema: FeatureSchema) -> dict[str, np.ndarray]:
  scalars, sequences, ldt, _, _ = records._layout(schema)
  out = {
    "label": np.zeros(0, np.uint8),
    **{name: np.zeros(0, d) for name, d, _ in scalars},
    "hist_len": np.zeros(0, ldt),
  }
  return {**out, **{name: np.zeros(0, d) for name, d in sequences}}


# ------------------------------------------------------------------ which blocks a process holds
def train_blocks(
  src: Source, seed: int, k: int, start: int, end: int, process_index: int = 0, process_count: int = 1
) -> list[int]:
  """The training records process `process_index` reads in global batches [start, end), sorted (every
  record with one process)."""
  n = len(src.blocks("train"))
  if process_count == 1:
    return list(range(n))
  order = BlockOrder(n, seed, k, process_index, process_count)
  first = process_index + start * k * process_count  # global positions p + P*j, j in [start*k, end*k)
  last = process_index + (end * k - 1) * process_count
  held: set[int] = set()
  for epoch in range(first // n, last // n + 1):
    lo, hi = max(first, epoch * n), min(last, (epoch + 1) * n - 1)
    lo += (process_index - lo) % process_count  # the first position of this process at or after lo
    for g in range(lo, hi + 1, process_count):
      held.add(order.position(g))
    if len(held) == n:
      break
  return sorted(held)


def eval_blocks(src: Source, split: str, process_index: int = 0, process_count: int = 1) -> list[int]:
  """The records of `split` a process evaluates (round robin), in order."""
  return list(range(process_index, len(src.blocks(split)), process_count))


def estimate_bytes(src: Source, split: str, fraction: float = 1.0) -> int:
  """What a process's share `fraction` of `split` takes as columns: its shard files' bytes (records are the
  columns plus a 12-byte header; shards written compressed by an earlier version are undercounted) plus the
  4-byte `start` of each row."""
  size = sum(os.path.getsize(p) for p in src.paths(split) if os.path.exists(p))
  return int(fraction * (size + 4 * src.rows(split)))


# ------------------------------------------------------------------ row indices
def train_rows(held: Held, order: BlockOrder, seed: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
  """(this process's rows of global training batch `batch` in `held`, int32 [B], in the host path's order;
  the batch's blocks)."""
  blocks = np.asarray(order(batch), np.int64)
  starts, sizes = held.block_start[blocks], held.block_rows[blocks]
  if (starts < 0).any():
    raise DataError(f"training batch {batch} reads blocks this process did not load (a bug: please report it)")
  rows = np.repeat(starts - (np.cumsum(sizes) - sizes), sizes) + np.arange(int(sizes.sum()))
  permutation = np.random.default_rng([seed, batch, 1]).permutation(len(rows))
  return rows[permutation].astype(np.int32), blocks


class RowIterator:
  """Training inputs under data.placement=device, with TrainIterator's interface: `take(steps)` is the row
  indices of the next `steps` batches, [steps, B] placed on the devices (`place_rows`); rows are computed
  `ahead` batches ahead in a background thread. `get_state()` and `counts` count the batches taken."""

  def __init__(
    self,
    held: Held,
    order: BlockOrder,
    seed: int,
    start: int,
    blocks_per_batch: int,
    place_rows: Callable[[np.ndarray], Any],
    ahead: int = 2,
  ):
    self.batches, self.blocks_per_batch = start, blocks_per_batch
    self.counts = Counts()
    self._held, self._place = held, place_rows
    rows = (train_rows(held, order, seed, b) for b in itertools.count(start))
    self._ahead = Ahead(rows, ahead, "mian_jax-rows") if ahead > 0 else None
    self._it = self._ahead if self._ahead is not None else rows

  def take(self, steps: int) -> Any:
    rows, blocks = zip(*(next(self._it) for _ in range(steps)))
    c = self._held.counts(np.concatenate(blocks))
    self.counts.add(c.oov_ids, c.nonfinite)
    self.batches += steps
    return self._place(np.stack(rows))

  def get_state(self) -> dict[str, int]:
    return {"batches": self.batches, "blocks_per_batch": self.blocks_per_batch}

  def close(self) -> None:
    if self._ahead is not None:
      self._ahead.close()
