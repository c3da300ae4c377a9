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
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Iterator, Sequence

import grain
import numpy as np

from mian_jax.data import records
from mian_jax.data.errors import DataError  # noqa: F401  (re-exported: pipeline.DataError)
from mian_jax.schema import FeatureSchema


@dataclasses.dataclass(frozen=True)
class Source:
  """A data set on disk as the pipelines need it: its directory, schema and block sizes."""
  directory: Path
  schema: FeatureSchema
  meta: dict[str, Any]

  def paths(self, split: str) -> list[str]:
    return [str(self.directory / name) for name in self.meta["files"][split]]

  def blocks(self, split: str) -> list[int]:
    return self.meta["blocks"][split]

  def rows(self, split: str) -> int:
    return sum(self.blocks(split))

  def block_size(self) -> int:
    return max(self.blocks("train"))


def _decode_many(schema: FeatureSchema, max_len: int, blobs: Sequence[bytes]) -> dict[str, np.ndarray]:
  return records.concat([records.decode_block(schema, b, max_len) for b in blobs])


def _permute(seed: int, index: int, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  perm = np.random.default_rng([seed, index, 1]).permutation(len(batch["label"]))
  return {k: v[perm] for k, v in batch.items()}


def _source(src: Source, split: str) -> grain.sources.ArrayRecordDataSource:
  paths = src.paths(split)
  missing = [p for p in paths if not Path(p).exists()]
  if missing:
    raise DataError(f"{missing[0]} is missing; delete {src.directory} and rerun to regenerate the data")
  return grain.sources.ArrayRecordDataSource(paths)


def steps_per_epoch(src: Source, batch_per_process: int, process_count: int) -> int:
  blocks_per_batch = batch_per_process // src.block_size()
  return len(src.blocks("train")) // process_count // blocks_per_batch


class TrainIterator:
  """Per-process training batches; `get_state()` is the position a checkpoint stores."""

  def __init__(self, it: Iterator[dict[str, np.ndarray]], start: int, blocks_per_batch: int):
    self._it, self.batches, self.blocks_per_batch = it, start, blocks_per_batch

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._it)
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
                   process_count: int = 1, workers: int = 0, prefetch: int = 4, start: int = 0) -> TrainIterator:
  """An endless iterator of per-process training batches (numpy dicts), from global batch `start`."""
  block = src.block_size()
  if batch_per_process % block:
    raise DataError(f"per-process batch {batch_per_process} is not a multiple of the data's block size {block}; "
                    f"set train.batch_size to a multiple of {block * process_count}")
  k = batch_per_process // block
  if len(src.blocks("train")) < k * process_count:
    raise DataError(f"{src.directory} holds {src.rows('train')} training samples, fewer than one batch; "
                    f"lower train.batch_size or raise data.scale")
  ds = grain.MapDataset.source(_source(src, "train")).shuffle(seed=seed).repeat(None)
  ds = ds[process_index::process_count]
  ds = ds.batch(k, drop_remainder=True, batch_fn=functools.partial(_decode_many, src.schema, max_len))
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
  from absl import flags

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def eval_batches(src: Source, split: str, *, rows_per_process: int, max_len: int, process_index: int = 0,
                 process_count: int = 1) -> tuple[int, Iterator[dict[str, np.ndarray]]]:
  """(number of batches, iterator) over every row of `split` held by this process, in order.

  Blocks are dealt to processes round robin; each process pads to the same number of batches.
  """
  sizes = src.blocks(split)
  mine = list(range(process_index, len(sizes), process_count))
  counts = [sum(sizes[i::process_count]) for i in range(process_count)]
  num_batches = max(1, -(-max(counts) // rows_per_process))
  source = _source(src, split)

  def gen() -> Iterator[dict[str, np.ndarray]]:
    pending: list[dict[str, np.ndarray]] = []
    have, emitted = 0, 0
    for start in range(0, len(mine), 64):  # one read call for 64 blocks
      for blob in source.__getitems__(mine[start:start + 64]):
        pending.append(records.decode_block(src.schema, blob, max_len))
        have += len(pending[-1]["label"])
        while have >= rows_per_process:
          merged = records.concat(pending)
          yield {k: v[:rows_per_process] for k, v in merged.items()}
          emitted += 1
          pending = [{k: v[rows_per_process:] for k, v in merged.items()}]
          have -= rows_per_process
    template = records.decode_block(src.schema, source[0], max_len)
    empty = {k: v[:0] for k, v in template.items()}
    while emitted < num_batches:
      yield records.pad_rows(records.concat(pending + [empty]), rows_per_process)
      pending, emitted = [], emitted + 1

  return num_batches, gen()
