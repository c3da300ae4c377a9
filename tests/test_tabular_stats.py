"""tabular.ShardStats: a data set's statistics are its shards' merged, equal to counting all rows at once."""

import json

import numpy as np
import pytest

from mian_jax.data import tabular
from mian_jax.data.tabular import Column, ShardStats, Spec
from mian_jax.errors import DataError

SPEC = Spec(
  name="t",
  columns=(
    Column("y", "label", "label", "label"),
    Column("i", "item_id", "item", "categorical", vocab="item"),
    Column("h", "hist_item_id", "behaviour", "sequence", vocab="item", separator="^"),
    Column("p", "price", "context", "numeric"),
  ),
  user_key="",
  max_len=3,
  block_size=4,
  seed=0,
  max_bad_rows=10,
  fmt=None,
)


def _cols(rng, n):
  full = rng.integers(0, 6, n)
  hist = np.where(np.arange(3)[None, :] < np.minimum(full, 3)[:, None], rng.integers(1, 5, (n, 3)), 0)
  return {"label": rng.integers(0, 2, n).astype(np.uint8), "item_id": rng.integers(0, 5, n),
          "hist_item_id": hist, "_hist_full": full}  # fmt: skip


def _stats(split_cols, oov, bad):
  st = ShardStats.empty(SPEC)
  for split, cols in split_cols.items():
    st.add_split(SPEC, split, cols, {"oov": dict(oov), "nonfinite": {"price": 1}})
  st.bad_rows = bad
  return st


def test_merge_equals_counting_every_row_at_once():
  rng = np.random.default_rng(0)
  a = {"train": _cols(rng, 9), "test": _cols(rng, 5)}
  b = {"train": _cols(rng, 7), "test": _cols(rng, 0)}
  whole = {s: {k: np.concatenate([a[s][k], b[s][k]]) for k in a[s]} for s in a}
  oov = {"item_id": 2, "hist_item_id": 1}
  sa = _stats(a, oov, {"count": 8, "examples": [f"a{i}" for i in range(8)]})
  sb = _stats(b, oov, {"count": 3, "examples": ["b0", "b1", "b2"]})
  merged = ShardStats.merged([sa.to_dict(), json.loads(json.dumps(sb.to_dict()))])  # as shards.build stores them
  one = _stats(whole, oov, {})
  assert merged.rows == one.rows == {"train": 16, "valid": 0, "test": 5}
  assert merged.positives == one.positives and merged.positives["train"] == int(whole["train"]["label"].sum())
  assert merged.hist_hist == one.hist_hist and sum(merged.hist_hist) == 21
  assert merged.longer == one.longer == int((np.concatenate([whole[s]["_hist_full"] for s in a]) > 3).sum())
  assert (merged.unrelated, merged.candidate_in_history) == (one.unrelated, one.candidate_in_history)
  assert merged.oov["train"] == {"item_id": 4, "hist_item_id": 2} and merged.nonfinite["test"] == {"price": 2}
  assert merged.blocks["train"] == [4, 4, 1, 4, 3]  # each shard's blocks, in shard order
  assert merged.bad_rows == {"count": 11, "examples": [f"a{i}" for i in range(8)] + ["b0", "b1"]}  # the first 10


def test_summary_of_merged_shards_and_the_bad_row_total():
  rng = np.random.default_rng(1)
  parts = [_cols(rng, n) for n in (40, 80)]
  clean = {"count": 0, "examples": []}
  shards = [_stats({"train": c}, {"item_id": 0, "hist_item_id": 0}, clean).to_dict() for c in parts]
  summary = tabular.summarize(SPEC, {"item": ["a", "b", "c", "d"]}, {"price": (1.0, 2.0)}, shards)
  full = np.concatenate([c["_hist_full"] for c in parts])
  assert summary["rows"]["train"] == 120 and summary["vocabularies"] == {"item": 4}
  for q in (50, 90, 99):  # the smallest length whose cumulative share reaches q%
    assert summary["history_length_percentiles"][str(q)] == float(np.sort(full)[int(np.ceil(q / 100 * 120)) - 1])
  assert summary["share_histories_longer_than_max_len"] == (full > 3).sum() / 120
  # each shard stays under max_bad_rows=10, their total does not: the build fails
  shards = [{**s, "bad_rows": {"count": 6, "examples": [f"line {i}"]}} for i, s in enumerate(shards)]
  with pytest.raises(DataError, match="12 bad rows, more than data.max_bad_rows=10; first: line 0"):
    tabular.summarize(SPEC, {"item": ["a"]}, {}, shards)
