"""grain pipelines on real ArrayRecord shards: determinism, disjoint process slices, resumable state."""

import numpy as np
import pytest

from mian_jax.data import pipeline


def _rows(batch):
  """A hashable identity per sample (every stored column of the row)."""
  keys = sorted(batch)
  return {
    tuple(np.concatenate([np.atleast_1d(batch[k][i]).astype(np.float64) for k in keys]))
    for i in range(len(batch["label"]))
  }


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_same_seed_same_batches_other_seed_other_order(tiny_source):
  kw = dict(batch_per_process=64, max_len=10)
  a = _take(pipeline.train_iterator(tiny_source, seed=1, **kw), 5)
  b = _take(pipeline.train_iterator(tiny_source, seed=1, **kw), 5)
  c = _take(pipeline.train_iterator(tiny_source, seed=2, **kw), 5)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert not np.array_equal(a[0]["item_id"], c[0]["item_id"])
  assert a[0]["hist_item_id"].shape == (64, 10)


def test_processes_read_disjoint_samples(tiny_source):
  kw = dict(batch_per_process=64, max_len=10, seed=3, process_count=2)
  n = pipeline.steps_per_epoch(tiny_source, 64, 2)
  p0 = set().union(*map(_rows, _take(pipeline.train_iterator(tiny_source, process_index=0, **kw), n)))
  p1 = set().union(*map(_rows, _take(pipeline.train_iterator(tiny_source, process_index=1, **kw), n)))
  assert len(p0) > 64 * (n - 1) and len(p1) > 64 * (n - 1)
  assert not p0 & p1


def test_one_epoch_sees_every_block_once(tiny_source):
  n = pipeline.steps_per_epoch(tiny_source, 64, 1)
  rows = [
    r
    for b in _take(pipeline.train_iterator(tiny_source, batch_per_process=64, max_len=10, seed=0), n)
    for r in _rows(b)
  ]
  assert len(rows) == len(set(rows)) == n * 64


def test_iterator_state_resumes_exactly(tiny_source):
  kw = dict(batch_per_process=64, max_len=10, seed=4)
  it = pipeline.train_iterator(tiny_source, **kw)
  _take(it, 3)
  state = it.get_state()
  assert state == {"batches": 3, "blocks_per_batch": 64 // tiny_source.block_size()}
  expected = _take(it, 2)
  resumed = pipeline.train_iterator(tiny_source, start=pipeline.resume_from(state, state["blocks_per_batch"]), **kw)
  for x, y in zip(expected, _take(resumed, 2)):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_a_position_maps_to_another_process_count_and_batch_size(tiny_source):
  """Global batch s holds the same samples whatever the number of processes; a position written by 2
  processes resumes on 1 (and at a batch twice as large) with no sample skipped or repeated."""
  block = tiny_source.block_size()
  kw = dict(max_len=10, seed=5)
  one = pipeline.train_iterator(tiny_source, batch_per_process=4 * block, **kw)
  two = [
    pipeline.train_iterator(tiny_source, batch_per_process=2 * block, process_index=i, process_count=2, **kw)
    for i in range(2)
  ]
  for _ in range(4):
    assert _rows(next(one)) == _rows(next(two[0])) | _rows(next(two[1]))
  state = two[0].get_state()  # 4 global batches of 4 blocks
  assert state == {"batches": 4, "blocks_per_batch": 4}
  seen = set().union(
    *(_rows(b) for b in _take(pipeline.train_iterator(tiny_source, batch_per_process=8 * block, **kw), 2))
  )
  wide = pipeline.train_iterator(tiny_source, batch_per_process=8 * block, start=pipeline.resume_from(state, 8), **kw)
  assert pipeline.resume_from(state, 8) == 2
  resumed = _rows(next(wide))
  assert not resumed & seen  # the first 16 blocks were consumed before the checkpoint
  expected = _rows(next(one)) | _rows(next(one))  # blocks 16..23 in the 4-block order
  assert resumed == expected
  with pytest.raises(pipeline.DataError, match="reset_data_position=true"):
    pipeline.resume_from({"batches": 3, "blocks_per_batch": 4}, 8)
  assert pipeline.resume_from({"batches": 3, "blocks_per_batch": 4}, 8, reset=True) == 0


def test_eval_batches_cover_every_row_once_across_processes(tiny_source):
  total = tiny_source.rows("test")
  seen = []
  counts = []
  for pid in range(2):
    num, it = pipeline.eval_batches(
      tiny_source, "test", rows_per_process=100, max_len=10, process_index=pid, process_count=2
    )
    batches = list(it)
    counts.append(num)
    assert len(batches) == num
    assert all(len(b["label"]) == 100 for b in batches)
    for b in batches:
      real = b["weight"] > 0
      seen += list(_rows({k: v[real] for k, v in b.items()}))
  assert counts[0] == counts[1]
  assert len(seen) == total == len(set(seen))
