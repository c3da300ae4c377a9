"""Schema -> compact binary block records; vectorised encode / decode.

One ArrayRecord record holds a *block* of n samples, stored column by column, because every read
call into an ArrayRecord file costs about the same whatever it returns: reading a block per call
amortises that cost over n samples. Layout (little endian):

    b"MJB1" | n: u32 | total: u32 | label: n x u8 | per scalar field: n x dtype
            | lengths: n x (u8 or u16) | per behaviour field: total x dtype

Scalar fields and behaviour fields appear in schema order; each id column uses the smallest unsigned
integer type that holds its vocabulary (`Feature.dtype`), numeric fields float32. Histories are stored
ragged (only the real behaviours, oldest first) and decoded right-padded to T = max_len, keeping the
most recent T when a stored history is longer.

Decoded batches are dicts of numpy arrays: every field as int32 [B] / float32 [B] / int32 [B, T],
`label` float32 [B], `hist_len` int32 [B] (real behaviours per row) and `weight` float32 [B]
(1 for real rows, 0 for padding rows added to fill the last evaluation batch).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from mian_jax.errors import DataError
from mian_jax.schema import FeatureSchema

MAGIC = b"MJB1"
_HEADER = np.dtype([("magic", "S4"), ("n", "<u4"), ("total", "<u4")])


class RecordError(DataError):
  """A record that does not match the schema (bad magic, size or layout)."""


def _len_dtype(schema: FeatureSchema) -> np.dtype:
  return np.dtype(np.uint8 if schema.max_len <= 255 else np.uint16)


def _scalars(schema: FeatureSchema):
  return [f for f in schema.features if f.kind != "sequence"]


def _sequences(schema: FeatureSchema):
  return [f for f in schema.features if f.kind == "sequence"]


def encode_block(schema: FeatureSchema, columns: Mapping[str, np.ndarray]) -> bytes:
  """Encodes n samples. `columns`: label [n], scalar fields [n], `hist_len` [n], behaviour fields [n, T]."""
  labels = np.asarray(columns["label"])
  n = labels.shape[0]
  lengths = np.minimum(np.asarray(columns["hist_len"]), schema.max_len).astype(_len_dtype(schema))
  valid = np.arange(schema.max_len)[None, :] < lengths[:, None]  # [n, T]
  parts = [np.array([(MAGIC, n, int(lengths.sum(dtype=np.int64)))], _HEADER).tobytes(),
           labels.astype(np.uint8).tobytes()]
  for f in _scalars(schema):
    parts.append(np.asarray(columns[f.name]).astype(f.dtype).tobytes())
  parts.append(lengths.tobytes())
  for f in _sequences(schema):
    parts.append(np.asarray(columns[f.name])[:, :schema.max_len][valid].astype(f.dtype).tobytes())
  return b"".join(parts)


def decode_block(schema: FeatureSchema, record: bytes, max_len: int | None = None) -> dict[str, np.ndarray]:
  """Decodes one block record into right-padded arrays of width T = max_len (default schema.max_len)."""
  t = max_len or schema.max_len
  buf = memoryview(record)
  if len(buf) < _HEADER.itemsize:
    raise RecordError(f"record of {len(buf)} bytes is shorter than its header")
  header = np.frombuffer(buf, _HEADER, count=1)[0]
  if header["magic"] != MAGIC:
    raise RecordError(f"record does not start with {MAGIC!r} (not written by mian_jax or corrupt)")
  n, total = int(header["n"]), int(header["total"])
  ldt = _len_dtype(schema)
  expected = _HEADER.itemsize + n + sum(n * f.dtype.itemsize for f in _scalars(schema)) + n * ldt.itemsize
  expected += sum(total * f.dtype.itemsize for f in _sequences(schema))
  if expected != len(buf):
    raise RecordError(f"record holds {len(buf)} bytes but the schema needs {expected} for {n} samples")
  offset = _HEADER.itemsize

  def take(dtype: np.dtype, count: int) -> np.ndarray:
    nonlocal offset
    out = np.frombuffer(buf, dtype, count=count, offset=offset)
    offset += count * dtype.itemsize
    return out

  out: dict[str, np.ndarray] = {"label": take(np.dtype(np.uint8), n).astype(np.float32)}
  for f in _scalars(schema):
    out[f.name] = take(f.dtype, n).astype(np.float32 if f.kind == "numeric" else np.int32)
  lengths = take(ldt, n).astype(np.int64)
  if int(lengths.sum()) != total:
    raise RecordError(f"record history lengths sum to {int(lengths.sum())}, header says {total}")
  keep = np.minimum(lengths, t)  # the most recent `keep` behaviours
  src = np.cumsum(lengths) - keep  # where each row's kept slice starts
  pos = np.arange(t)[None, :]
  valid = pos < keep[:, None]  # [n, T]
  index = np.where(valid, src[:, None] + pos, 0)
  for f in _sequences(schema):
    values = take(f.dtype, total)
    seq = values[index] if total else np.zeros((n, t), f.dtype)
    out[f.name] = np.where(valid, seq, 0).astype(np.int32)
  out["hist_len"] = keep.astype(np.int32)
  out["weight"] = np.ones(n, np.float32)
  return out


def concat(batches: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def pad_rows(batch: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
  """Pads a batch to `rows` rows with zero rows (weight 0), so that every step has one static shape."""
  n = len(batch["label"])
  if n == rows:
    return dict(batch)
  return {k: np.concatenate([v, np.zeros((rows - n,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
