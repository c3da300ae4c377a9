"""The block codec: round trip, truncation to the most recent behaviours, corrupt records refused."""

import numpy as np
import pytest

from mian_jax.data import records
from mian_jax.schema import Feature, FeatureSchema


def _schema(max_len=6):
  return FeatureSchema(
    (
      Feature("item", "item", "categorical", 300, "items"),
      Feature("hist", "behaviour", "sequence", 300, "items"),
      Feature("hist_age", "behaviour", "sequence", 70000),
      Feature("uid", "user", "categorical", 5),
      Feature("score", "user", "numeric"),
      Feature("hour", "context", "categorical", 25),
    ),
    user_key="uid",
    max_len=max_len,
  )


def _columns(schema, n, rng):
  lengths = rng.integers(0, schema.max_len + 1, n)
  lengths[0] = 0  # an empty history
  valid = np.arange(schema.max_len)[None] < lengths[:, None]
  return {
    "label": rng.integers(0, 2, n),
    "item": rng.integers(1, 300, n),
    "uid": rng.integers(1, 5, n),
    "score": rng.normal(size=n).astype(np.float32),
    "hour": rng.integers(1, 25, n),
    "hist_len": lengths,
    "hist": np.where(valid, rng.integers(1, 300, (n, schema.max_len)), 0),
    "hist_age": np.where(valid, rng.integers(1, 70000, (n, schema.max_len)), 0),
  }


def test_layout_uses_the_smallest_integer_types():
  s = _schema()
  assert s["item"].dtype == np.uint16 and s["hour"].dtype == np.uint8 and s["hist_age"].dtype == np.uint32
  assert s["score"].dtype == np.float32


def test_round_trip():
  schema = _schema()
  cols = _columns(schema, 40, np.random.default_rng(0))
  blob = records.encode_block(schema, cols)
  out = records.decode_block(schema, blob)
  for name in ("label", "item", "uid", "score", "hour", "hist", "hist_age", "hist_len"):
    np.testing.assert_array_equal(out[name], cols[name], err_msg=name)
  assert out["item"].dtype == np.int32 and out["score"].dtype == np.float32 and out["label"].dtype == np.float32
  np.testing.assert_array_equal(out["weight"], 1)


def test_decode_keeps_the_most_recent_behaviours():
  schema = _schema(max_len=6)
  cols = _columns(schema, 10, np.random.default_rng(1))
  out = records.decode_block(schema, records.encode_block(schema, cols), max_len=3)
  for i in range(10):
    n = int(cols["hist_len"][i])
    keep = min(n, 3)
    np.testing.assert_array_equal(out["hist"][i, :keep], cols["hist"][i, n - keep : n])
    np.testing.assert_array_equal(out["hist"][i, keep:], 0)
    assert out["hist_len"][i] == keep


def test_corrupt_records_are_refused():
  schema = _schema()
  blob = records.encode_block(schema, _columns(schema, 8, np.random.default_rng(2)))
  with pytest.raises(records.RecordError, match="bytes"):
    records.decode_block(schema, blob[:-3])
  with pytest.raises(records.RecordError, match="MJB1"):
    records.decode_block(schema, b"XXXX" + blob[4:])
