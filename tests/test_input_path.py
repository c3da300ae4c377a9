"""The fast input path gives, to the bit, the batches of the reference path it replaced: blocks in grain's
shuffled order, each decoded by records.decode_block, concatenated, then permuted by the batch's seeded
order (training); every row in order, cut into batches (evaluation). Also: batches placed on devices ahead
of the step still count positions and OOV values per batch returned, and a placing thread's error reaches
the caller."""

import threading

import grain
import numpy as np
import pytest

from mian_jax.data import pipeline, records
from mian_jax.data.ahead import Ahead
from mian_jax.data.memory import keep_freed_memory
from test_records import _columns, _schema


def _reference_train_batch(src, seed, batch, k, max_len, process_index=0, process_count=1):
  """The reference: grain's shuffled record stream, per-block decode, concatenation, seeded permutation."""
  located = pipeline._Located(src, "train")
  order = grain.MapDataset.range(len(located)).shuffle(seed=seed).repeat(None)[process_index::process_count]
  blocks = [records.decode_block(src.schema, located[int(order[batch * k + m])][1], max_len) for m in range(k)]
  cat = records.concat(blocks)
  perm = np.random.default_rng([seed, batch, 1]).permutation(len(cat["label"]))
  return {key: v[perm] for key, v in cat.items()}


def _assert_same(a, b):
  assert list(a) == list(b)
  for key in a:
    assert a[key].dtype == b[key].dtype, key
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("records_, k, count", [(37, 4, 1), (37, 4, 3), (5, 2, 2), (1, 1, 1)])
def test_block_order_is_grains_shuffle_repeat_slice_batch(records_, k, count):
  for index in range(count):
    chain = grain.MapDataset.range(records_).shuffle(seed=7).repeat(None)[index::count].batch(k, batch_fn=list)
    order = pipeline.BlockOrder(records_, 7, k, index, count)
    for batch in range(3 * records_ // k + 2):  # over several epochs (each reshuffled)
      assert order(batch) == [int(i) for i in chain[batch]], (index, batch)


@pytest.mark.parametrize("threads", [1, 3])
def test_training_batches_equal_the_reference_path(tiny_source, threads):
  block = tiny_source.block_size()
  for start, max_len, count in ((0, 10, 1), (5, 6, 1), (2, 10, 2)):
    for index in range(count):
      it = pipeline.train_iterator(
        tiny_source,
        batch_per_process=3 * block,
        seed=11,
        max_len=max_len,
        start=start,
        threads=threads,
        process_index=index,
        process_count=count,
      )
      for batch in range(start, start + 4):
        _assert_same(next(it), _reference_train_batch(tiny_source, 11, batch, 3, max_len, index, count))


def test_evaluation_batches_equal_every_row_in_order(tiny_source):
  located = pipeline._Located(tiny_source, "test")
  every = records.concat([records.decode_block(tiny_source.schema, located[i][1], 10) for i in range(len(located))])
  rows = 300  # cuts across blocks and across the decoder's chunks of EVAL_BLOCKS blocks
  num, it = pipeline.eval_batches(tiny_source, "test", rows_per_process=rows, max_len=10, threads=2)
  batches = list(it)
  assert len(batches) == num == -(-len(every["label"]) // rows)
  got = records.concat(batches)
  real = got["weight"] > 0
  _assert_same({k: v[real] for k, v in got.items()}, every)
  assert not got["weight"][~real].any() and (~real).sum() == num * rows - len(every["label"])


def _blob(schema, n, rng):
  """A block of n rows of test_records' schema (histories of 0..T behaviours; n may be 0)."""
  columns = _columns(schema, max(n, 1), rng)
  return records.encode_block(schema, {k: v[:n] for k, v in columns.items()})


@pytest.mark.parametrize("sizes", [(8, 8, 8), (8, 3, 0, 5), (1,)])
def test_decode_blocks_equals_decode_block_per_record(sizes):
  schema = _schema()
  rng = np.random.default_rng(len(sizes))
  blobs = [_blob(schema, n, rng) for n in sizes]
  for max_len in (6, 2):
    reference = records.concat([records.decode_block(schema, b, max_len) for b in blobs])
    _assert_same(records.decode_blocks(schema, blobs, max_len), reference)
    perm = rng.permutation(sum(sizes))
    _assert_same(
      records.decode_blocks(schema, blobs, max_len, lambda rows: perm), {k: v[perm] for k, v in reference.items()}
    )


def test_decode_blocks_names_the_bad_record():
  schema = _schema()
  rng = np.random.default_rng(0)
  blobs = [_blob(schema, 8, rng) for _ in range(3)]
  for bad, words in ((blobs[1][:-2], "bytes"), (b"XXXX" + blobs[1][4:], "MJB1")):
    with pytest.raises(records.RecordError, match=words) as e:
      records.decode_blocks(schema, [blobs[0], bad, blobs[2]])
    assert e.value.block == 1


def test_placed_batches_count_positions_and_values_as_they_are_returned(tiny_source):
  block = tiny_source.block_size()
  placed = []
  it = pipeline.train_iterator(
    tiny_source,
    batch_per_process=2 * block,
    seed=1,
    max_len=10,
    place=lambda b: placed.append(1) or {"label": b["label"]},
    device_prefetch=3,
  )
  for _ in range(2):
    assert set(next(it)) == {"label"}
  waited = threading.Event()
  for _ in range(200):  # the thread runs ahead meanwhile (up to 3 batches)
    if len(placed) > 2:
      break
    waited.wait(0.05)
  assert len(placed) > 2  # placed ahead of the caller ...
  assert it.get_state() == {"batches": 2, "blocks_per_batch": 2}  # ... but the position counts what was returned
  it.close()


def test_an_error_while_working_ahead_reaches_the_caller_after_the_elements_before_it():
  def source():
    yield 1
    yield 2
    raise pipeline.DataError("shard x record 3: cannot be read")

  ahead = Ahead(source(), 1)
  assert [next(ahead), next(ahead)] == [1, 2]
  with pytest.raises(pipeline.DataError, match="record 3"):
    next(ahead)
  with pytest.raises(StopIteration):
    next(ahead)
  endless = Ahead(iter(int, 1), 2)  # 0, 0, 0, ...
  next(endless)
  endless.close()
  assert not endless._thread.is_alive()


def test_freed_memory_is_kept_on_glibc():
  import platform

  if platform.libc_ver()[0] != "glibc":
    pytest.skip("glibc only (mallopt)")
  assert keep_freed_memory() is True
