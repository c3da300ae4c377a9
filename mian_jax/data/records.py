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

`decode_blocks` decodes the k blocks of a batch together (the input path's decoder): one copy per
column out of the records in their stored (narrow) types, the rows reordered by `order` before they are
widened, and each behaviour field right-padded by one gather whose index already holds the order, so a
batch is never copied to be permuted. Its output equals `decode_block` on each record, concatenated,
then indexed by `order`, to the bit (tests/test_records.py); `decode_block` stays the reference and
the path that names a bad record.
"""

from __future__ import annotations

import functools
import struct
from typing import Callable, Mapping, Sequence

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
  parts = [
    np.array([(MAGIC, n, int(lengths.sum(dtype=np.int64)))], _HEADER).tobytes(),
    labels.astype(np.uint8).tobytes(),
  ]
  for f in _scalars(schema):
    parts.append(np.asarray(columns[f.name]).astype(f.dtype).tobytes())
  parts.append(lengths.tobytes())
  for f in _sequences(schema):
    parts.append(np.asarray(columns[f.name])[:, : schema.max_len][valid].astype(f.dtype).tobytes())
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


@functools.lru_cache(maxsize=64)
def _layout(schema: FeatureSchema) -> tuple[tuple, tuple, np.dtype, int, int]:
  """(scalar columns as (name, stored dtype, decoded dtype), behaviour columns as (name, stored dtype),
  lengths' dtype, bytes per row before the histories, bytes per stored behaviour)."""
  scalars = tuple(
    (f.name, f.dtype, np.dtype(np.float32 if f.kind == "numeric" else np.int32)) for f in _scalars(schema)
  )
  sequences = tuple((f.name, f.dtype) for f in _sequences(schema))
  ldt = _len_dtype(schema)
  per_row = 1 + sum(d.itemsize for _, d, _ in scalars) + ldt.itemsize
  return scalars, sequences, ldt, per_row, sum(d.itemsize for _, d in sequences)


def stored_columns(schema: FeatureSchema, blobs: Sequence[bytes]) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """The k block records `blobs` as columns in their stored (narrow) types, blocks concatenated: `label`
  u8 [N], each scalar field [N], `hist_len` [N] (the stored history lengths, u8 / u16) and each behaviour
  field's values [sum of lengths] (ragged: row r's are the `hist_len[r]` values after those of the rows
  before it); and the rows of each block [k]. A record that does not match the schema raises
  decode_block's RecordError with `.block` = its position in `blobs`."""
  scalars, sequences, ldt, per_row, per_behaviour = _layout(schema)
  k = len(blobs)
  head = np.zeros((k, 2), np.int64)  # n, total per block
  for j, blob in enumerate(blobs):
    if len(blob) < _HEADER.itemsize or blob[:4] != MAGIC:
      _refuse(schema, blobs, j)
    head[j] = struct.unpack_from("<II", blob, 4)
  n, total = head[:, 0], head[:, 1]
  sizes = np.fromiter((len(b) for b in blobs), np.int64, k)
  bad = np.flatnonzero(sizes != _HEADER.itemsize + n * per_row + total * per_behaviour)
  if bad.size:
    _refuse(schema, blobs, int(bad[0]))

  def column(dtype: np.dtype, offsets: np.ndarray, counts: np.ndarray) -> np.ndarray:
    return (
      np.concatenate([np.frombuffer(b, dtype, int(c), int(o)) for b, o, c in zip(blobs, offsets, counts)])
      if k
      else np.zeros(0, dtype)
    )

  # The columns before the histories: when every block holds the same number of rows (training batches),
  # they sit at the same offsets in every record, so one gather of those bytes from all k records and one
  # copy per column replace k reads per column.
  fixed = [("label", np.dtype(np.uint8))] + [(name, dtype) for name, dtype, _ in scalars] + [("hist_len", ldt)]
  out: dict[str, np.ndarray] = {}
  if k and (n == n[0]).all():
    m = int(n[0])
    head_bytes = _HEADER.itemsize + m * per_row
    prefix = np.frombuffer(b"".join(blobs), np.uint8)[
      (np.cumsum(sizes) - sizes)[:, None] + np.arange(_HEADER.itemsize, head_bytes)
    ]  # [k, m * per_row]
    at = 0
    for name, dtype in fixed:
      out[name] = np.ascontiguousarray(prefix[:, at : at + m * dtype.itemsize]).view(dtype).reshape(-1)
      at += m * dtype.itemsize
    offset = np.full(k, head_bytes, np.int64)
  else:
    offset = np.full(k, _HEADER.itemsize, np.int64)
    for name, dtype in fixed:
      out[name] = column(dtype, offset, n)
      offset = offset + n * dtype.itemsize
  lengths = out["hist_len"].astype(np.int64)
  sums = np.add.reduceat(lengths, np.cumsum(n) - n) if lengths.size else np.zeros(k, np.int64)
  sums[n == 0] = 0  # reduceat reads one element for an empty block
  bad = np.flatnonzero(sums != total)
  if bad.size:
    _refuse(schema, blobs, int(bad[0]))
  for name, dtype in sequences:
    out[name] = column(dtype, offset, total)
    offset = offset + total * dtype.itemsize
  return out, n


def decode_blocks(
  schema: FeatureSchema,
  blobs: Sequence[bytes],
  max_len: int | None = None,
  order: Callable[[int], np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
  """Decodes k block records as one batch, its rows taken in the order `order(rows)` returns (a
  permutation of the rows of the concatenated blocks; None = as stored). Equal to
  concat([decode_block(b) for b in blobs]) indexed by that permutation. A record that does not match the
  schema raises decode_block's RecordError with `.block` = its position in `blobs`."""
  t = max_len or schema.max_len
  scalars, sequences, _, _, _ = _layout(schema)
  stored, _ = stored_columns(schema, blobs)
  lengths = stored["hist_len"].astype(np.int64)
  rows = np.arange(len(lengths)) if order is None else np.asarray(order(len(lengths)))
  keep = np.minimum(lengths, t)  # the most recent `keep` behaviours
  src = np.cumsum(lengths) - keep  # where each row's kept slice starts in the batch's behaviours
  all_behaviours = int(lengths.sum())
  itype = np.int32 if all_behaviours < np.iinfo(np.int32).max - t else np.int64  # half the bytes of int64
  keep_r, src_r = keep[rows].astype(itype), src[rows].astype(itype)
  pos = np.arange(t, dtype=itype)[None, :]
  index = src_r[:, None] + pos  # [B, T]
  np.putmask(index, pos >= keep_r[:, None], all_behaviours)  # past a row's history: the 0 appended at the end
  out: dict[str, np.ndarray] = {"label": stored["label"][rows].astype(np.float32)}
  for name, dtype, decoded in scalars:
    out[name] = stored[name][rows].astype(decoded)
  for name, dtype in sequences:
    values = np.zeros(all_behaviours + 1, np.int32)
    values[:-1] = stored[name]
    out[name] = values.take(index)
  out["hist_len"] = keep_r.astype(np.int32)
  out["weight"] = np.ones(len(rows), np.float32)
  return out


def _refuse(schema: FeatureSchema, blobs: Sequence[bytes], j: int) -> None:
  """Raises decode_block's RecordError for block `j` (the reference decoder's words), with `.block`."""
  try:
    decode_block(schema, blobs[j])
  except RecordError as e:
    e.block = j
    raise
  raise RecordError("record layout does not match the schema")  # not reached: decode_block refused it


def concat(batches: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def pad_rows(batch: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
  """Pads a batch to `rows` rows with zero rows (weight 0), so that every step has one static shape."""
  n = len(batch["label"])
  if n == rows:
    return dict(batch)
  return {k: np.concatenate([v, np.zeros((rows - n,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
