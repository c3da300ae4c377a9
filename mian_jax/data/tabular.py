"""Tables of samples (one row = one impression with its history) -> vocabularies -> sharded block records.

The shared converter behind the DIEN and BARS Amazon layouts and the user's own CSV / Parquet files.
A `Spec` maps input columns to the four feature groups; `build` streams the inputs twice, both times
in parallel worker processes over parts of the files (`delimited.Part`):
  1. the training parts: value counts per vocabulary, mean / std of numeric columns;
  2. every part: rows -> ids (vectorised with pyarrow.compute), written as one shard per group of parts.
Between them, the validation and test parts (and the training parts when users are held out of them or
the user vocabulary is given) are read once more for the user keys the user vocabulary lacks (below).
Vocabularies come from the training split (or are given, e.g. DIEN's pickles): ids 1..n by falling
frequency (ties by value), 0 = padding and out of vocabulary (a value unseen in training). They are
written as `vocab/<name>.json` (the list of values; value k has id k + 1) beside the shards.
Numeric columns: optional log1p, then standardised by the training mean / std; a missing, NaN or
infinite value becomes 0 (the mean) and is counted. Sequences keep their most recent `max_len` entries,
stored oldest first. Training rows are shuffled inside each shard (seed `data.seed`) and cut into whole
blocks (the remainder, under one block per shard, is dropped and counted); test rows keep file order.
`stats.json` (also meta["stats"]) reports rows, vocabulary sizes, label rates, history-length
percentiles, candidates unrelated to their history, OOV counts and skipped bad rows.
User groups (gAUC): the user-key feature holds the training vocabulary's id, so every user unseen in
training shares OOV id 0. Beside it each row stores `user_group` (`group_field`; a stored, non-embedded
field, never a model input): the raw user key's group, equal to the user-key id for users in the
vocabulary and a distinct id >= its vocabulary size for every other non-empty raw key (n + 1, n + 2, ...
for a user vocabulary of n values, in order of first appearance in the data set's files: the training
files when users are held out of them or the vocabulary is given, then the validation and test files).
Those keys are written as `user_groups.json` (the list; key k has group n + 1 + k) and counted in
stats["user_groups"]; an empty or missing key is group 0. Evaluation groups by it
(`pipeline.Source.group_key`).
A data set is cached under <cache root>/<name>-<hash>: the hash covers the spec, the parameters and the
inputs' path, size and mtime, so an unchanged second run reuses the shards.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mian_jax.data import delimited, records, shards
from mian_jax.errors import DataError
from mian_jax.schema import Feature, FeatureSchema

VERSION = "tabular/2"  # 2: the user_group field (gAUC by the raw user key); older caches are rebuilt
GROUP_FIELD = "user_group"
GROUPS_FILE = "user_groups.json"
LABEL_PATTERN = r"^\s*[01](\.0*)?\s*$"


@dataclasses.dataclass(frozen=True)
class Options:
  """The data.* settings every tabular converter takes."""

  max_len: int
  block_size: int
  seed: int
  max_bad_rows: int
  part_bytes: int
  embed_user_id: bool
  holdout: bool = False  # carve a validation split from the training files (data.validation=holdout)
  holdout_fraction: float = 0.05  # where the split is a share of the users (data.validation_fraction)

  @classmethod
  def from_config(cls, cfg) -> "Options":
    if cfg.max_bad_rows < 0:
      raise DataError(f"data.max_bad_rows={cfg.max_bad_rows} must be >= 0")
    if cfg.part_mb <= 0:
      raise DataError(f"data.part_mb={cfg.part_mb} must be > 0")
    return cls(
      cfg.max_len,
      cfg.block_size,
      cfg.seed,
      cfg.max_bad_rows,
      max(1, int(cfg.part_mb * (1 << 20))),
      cfg.embed_user_id,
      cfg.validation == "holdout",
      cfg.validation_fraction,
    )


@dataclasses.dataclass(frozen=True)
class Column:
  source: str  # the input column ("" = a constant, for data without user ids)
  feature: str  # the schema feature it becomes ("label" for the label)
  group: str  # item | behaviour | user | context | label
  kind: str  # categorical | numeric | sequence | label
  vocab: str = ""  # vocabulary and embedding table; columns naming the same one share ids
  separator: str = ""  # sequence columns: the separator between entries
  newest_first: bool = False  # sequence columns: entries are stored most recent first
  log1p: bool = False  # numeric columns: log(1 + max(x, 0)) before standardising


@dataclasses.dataclass(frozen=True)
class Spec:
  name: str  # names the cache directory
  columns: tuple[Column, ...]
  user_key: str  # the feature that identifies a user (gAUC)
  max_len: int
  block_size: int
  seed: int
  max_bad_rows: int
  fmt: delimited.TextFormat | None  # None: Parquet
  given_vocabs: tuple[tuple[str, str], ...] = ()  # (vocab, JSON file of values in id order) used as is
  # The validation split carved from the training files: "" = none (or given as `valid` files); "last" =
  # each user's last training sample(s): the rows with the user's longest history (the positive and its
  # negatives share it), when the user has other training rows; "users" = a seeded `holdout_fraction` of
  # the users (of the rows, for data without a user column).
  holdout: str = ""
  holdout_fraction: float = 0.0

  def features(self, kind: str | None = None) -> list[Column]:
    return [c for c in self.columns if c.kind != "label" and (kind is None or c.kind == kind)]

  @property
  def label(self) -> Column:
    return next(c for c in self.columns if c.kind == "label")

  @property
  def user_column(self) -> Column:
    return next(c for c in self.columns if c.feature == self.user_key)

  def vocabs(self) -> list[str]:
    return sorted({c.vocab for c in self.columns if c.kind in ("categorical", "sequence")})

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "Spec":
    """The Spec a data set was built with, from its meta.json (`params.spec`)."""
    fmt = d.get("fmt")
    return cls(
      **{
        **d,
        "columns": tuple(Column(**c) for c in d["columns"]),
        "fmt": delimited.TextFormat(**{**fmt, "names": tuple(fmt["names"])}) if fmt else None,
        "given_vocabs": tuple(tuple(v) for v in d.get("given_vocabs", ())),
      }
    )


# ----------------------------------------------------------------------------------------------- rows


def _column(chunk: delimited.Chunk, name: str) -> pa.Array:
  """Column `name` of the chunk; the source "" is a constant (the single user of data without user ids)."""
  if not name:
    return pa.array(np.full(chunk.table.num_rows, "all", object), pa.string())
  return chunk.table.column(name).combine_chunks()


def _strings(array: pa.Array) -> pa.Array:
  """Categorical values as strings (Parquet integers too), surrounding blanks removed."""
  if pa.types.is_dictionary(array.type):
    array = array.dictionary_decode()
  if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
    array = pc.cast(array, pa.string())
  return pc.utf8_trim_whitespace(array)


def _tokens(array: pa.Array, separator: str) -> pa.Array:
  """A sequence column as a list array of strings ("" and null = an empty history)."""
  if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
    return pa.ListArray.from_arrays(_offsets(array), _strings(pc.list_flatten(array)))
  array = _strings(array)
  array = pc.if_else(pc.equal(array, ""), pa.scalar(None, pa.string()), array)
  return pc.split_pattern(array, separator)


def _offsets(array: pa.Array) -> pa.Array:
  lengths = np.asarray(pc.fill_null(pc.list_value_length(array), 0), np.int32)
  return pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))


def _lengths(lists: pa.Array) -> np.ndarray:
  return np.asarray(pc.fill_null(pc.list_value_length(lists), 0), np.int64)


def _take(chunk: delimited.Chunk, keep: np.ndarray) -> delimited.Chunk:
  """The chunk's rows where `keep` is True."""
  return (
    chunk
    if keep.all()
    else delimited.Chunk(chunk.table.take(pa.array(np.flatnonzero(keep))), chunk.lines[keep], chunk.path)
  )


def _scalar_type(t: pa.DataType) -> bool:
  """A Parquet type a label, categorical or numeric column may have: a number, a boolean or text."""
  if pa.types.is_dictionary(t):
    t = t.value_type
  return (
    pa.types.is_integer(t)
    or pa.types.is_floating(t)
    or pa.types.is_boolean(t)
    or pa.types.is_decimal(t)
    or pa.types.is_string(t)
    or pa.types.is_large_string(t)
  )


def check_types(chunk: delimited.Chunk, spec: Spec) -> None:
  """DataError naming the file and column whose (Parquet) type its kind cannot read: a label, categorical or
  numeric column must hold numbers, booleans or text; a sequence a list of them, or text with separators."""
  for c in spec.columns:
    if not c.source:
      continue
    t = chunk.table.schema.field(c.source).type
    if c.kind == "sequence" and (pa.types.is_list(t) or pa.types.is_large_list(t)):
      ok, t_inner = _scalar_type(t.value_type), t.value_type
    else:
      ok, t_inner = _scalar_type(t), None
    if not ok:
      expected = (
        "a list of numbers or text, or text with separators" if c.kind == "sequence" else "numbers, booleans or text"
      )
      raise DataError(
        f"{Path(chunk.path).name} column {c.source!r}: {'values of ' if t_inner else ''}type "
        f"{t_inner or t} cannot be read as a {c.kind if c.kind != 'label' else 'label'} column (expected "
        f"{expected}); convert the column in the file or leave it out of the schema"
      )


def validate(chunk: delimited.Chunk, spec: Spec, bad: delimited.BadRows) -> delimited.Chunk:
  """Drops (or raises on) rows with a label other than 0/1, sequences of unequal lengths, or a missing
  behaviour (a null or empty entry: `1^^2`, `[1, None, 2]`; an empty column is an empty history)."""
  unit = "row" if spec.fmt is None else "line"
  keep = np.ones(chunk.table.num_rows, bool)
  if spec.fmt is None:
    check_types(chunk, spec)
  label = _column(chunk, spec.label.source)
  if pa.types.is_boolean(label.type):
    label = pc.cast(label, pa.int8())
  if pa.types.is_integer(label.type) or pa.types.is_floating(label.type):
    ok = np.asarray(pc.fill_null(pc.is_in(label, value_set=pa.array([0, 1], label.type)), False))
  else:
    ok = np.asarray(pc.fill_null(pc.match_substring_regex(label, LABEL_PATTERN), False))
  for i in np.flatnonzero(~ok):
    value = label[int(i)].as_py()
    bad.add(chunk.path, int(chunk.lines[i]), f"{spec.label.source}={value!r} is not a 0/1 label", unit)
  keep &= ok
  seqs = spec.features("sequence")
  for c in seqs:
    lists = _tokens(_column(chunk, c.source), c.separator)
    flat = pc.list_flatten(lists)
    missing = np.asarray(pc.fill_null(pc.equal(flat, ""), True), bool)
    if missing.any():
      rows = np.asarray(pc.list_parent_indices(lists), np.int64)
      first = np.cumsum(_lengths(lists)) - _lengths(lists)
      for at in np.flatnonzero(missing):
        i = int(rows[at])
        if keep[i]:
          bad.add(
            chunk.path,
            int(chunk.lines[i]),
            f"{c.source} holds a missing behaviour (entry {at - first[i]} is "
            f"empty); leave missing behaviours out of the history",
            unit,
          )
          keep[i] = False
  if len(seqs) > 1:
    lengths = {c.source: _lengths(_tokens(_column(chunk, c.source), c.separator)) for c in seqs}
    first = seqs[0].source
    for c in seqs[1:]:
      for i in np.flatnonzero(keep & (lengths[c.source] != lengths[first])):
        bad.add(
          chunk.path,
          int(chunk.lines[i]),
          f"{c.source} has {lengths[c.source][i]} entries but {first} has "
          f"{lengths[first][i]}; the behaviour sequences must line up",
          unit,
        )
      keep &= lengths[c.source] == lengths[first]
  return _take(chunk, keep)


def _numeric(chunk: delimited.Chunk, c: Column, bad: delimited.BadRows, unit: str) -> tuple[np.ndarray, np.ndarray]:
  """(values float64 with NaN for missing / non-finite, ok mask); a non-numeric text is a bad row."""
  array = _column(chunk, c.source)
  if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
    array = pc.utf8_trim_whitespace(array)
    array = pc.if_else(pc.equal(array, ""), pa.scalar(None, pa.string()), array)
    try:
      values = np.asarray(pc.fill_null(pc.cast(array, pa.float64()), np.nan), np.float64)
      ok = np.ones(len(values), bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
      values, ok = np.full(len(array), np.nan), np.ones(len(array), bool)
      for i, v in enumerate(array.to_pylist()):
        try:
          values[i] = float(v) if v is not None else np.nan
        except ValueError:
          ok[i] = False
          bad.add(chunk.path, int(chunk.lines[i]), f"{c.source}={v!r} is not a number", unit)
  else:
    values = np.asarray(pc.fill_null(pc.cast(array, pa.float64()), np.nan), np.float64)
    ok = np.ones(len(values), bool)
  if c.log1p:
    values = np.log1p(np.maximum(values, 0.0))
  return np.where(np.isfinite(values), values, np.nan), ok


def chunks(spec: Spec, part: delimited.Part, bad: delimited.BadRows) -> Iterable[delimited.Chunk]:
  """Valid rows of one part, numeric columns checked (their non-numeric rows dropped or raised)."""
  needed = tuple(dict.fromkeys(c.source for c in spec.columns if c.source))
  unit = "row" if spec.fmt is None else "line"
  for chunk in delimited.read(part, spec.fmt, bad, needed):
    missing = [n for n in needed if n not in chunk.table.column_names]
    if missing:
      raise DataError(
        f"{Path(part.path).name}: column {missing[0]!r} is missing; it has {', '.join(chunk.table.column_names)}"
      )
    chunk = validate(chunk, spec, bad)
    keep = np.ones(chunk.table.num_rows, bool)
    for c in spec.features("numeric"):
      keep &= _numeric(chunk, c, bad, unit)[1]
    yield _take(chunk, keep)


# ------------------------------------------------------------------------------------ holdout


@dataclasses.dataclass(frozen=True)
class Held:
  """Spec.holdout "last": the users whose last training sample(s) are held out, with that sample's
  (uncapped) history length; sorted by user."""

  users: tuple[str, ...] = ()
  lengths: tuple[int, ...] = ()


def _history_lengths(spec: Spec, chunk: delimited.Chunk) -> np.ndarray:
  seq = spec.features("sequence")[0]
  return _lengths(_tokens(_column(chunk, seq.source), seq.separator))


def last_counts(spec: Spec, part: delimited.Part) -> dict[str, tuple[int, int, int]]:
  """Pass 0 of one training part: user -> (longest history, rows with it, rows)."""
  out: dict[str, tuple[int, int, int]] = {}
  for chunk in chunks(spec, part, delimited.BadRows(spec.max_bad_rows)):
    users = np.asarray(_strings(_column(chunk, spec.user_column.source)).to_pylist(), object)
    full = _history_lengths(spec, chunk)
    uniq, inverse = np.unique(users, return_inverse=True)
    longest = np.full(len(uniq), -1, np.int64)
    np.maximum.at(longest, inverse, full)
    at_max = np.bincount(inverse[full == longest[inverse]], minlength=len(uniq))
    rows = np.bincount(inverse, minlength=len(uniq))
    for u, m, a, n in zip(uniq.tolist(), longest.tolist(), at_max.tolist(), rows.tolist()):
      out[u] = _merge_last(out.get(u), (m, a, n))
  return out


def _merge_last(a: tuple[int, int, int] | None, b: tuple[int, int, int]) -> tuple[int, int, int]:
  if a is None:
    return b
  if a[0] == b[0]:
    return a[0], a[1] + b[1], a[2] + b[2]
  top = a if a[0] > b[0] else b
  return top[0], top[1], a[2] + b[2]


def merge_held(results: list[dict[str, tuple[int, int, int]]]) -> Held:
  """The users with rows besides their last sample(s), and that sample's history length."""
  total: dict[str, tuple[int, int, int]] = {}
  for r in results:
    for u, counts in r.items():
      total[u] = _merge_last(total.get(u), counts)
  held = sorted((u, m) for u, (m, at_max, rows) in total.items() if at_max < rows)
  return Held(tuple(u for u, _ in held), tuple(m for _, m in held))


def _share(keys: list[str], seed: int) -> np.ndarray:
  """A stable pseudo-random number in [0, 1) per key (seeded BLAKE2b), the same on every machine."""
  return (
    np.asarray(
      [int.from_bytes(hashlib.blake2b(f"{seed}\x00{k}".encode(), digest_size=8).digest(), "little") for k in keys],
      np.float64,
    )
    / 2.0**64
  )


def held_out(spec: Spec, chunk: delimited.Chunk, held: Held | None) -> np.ndarray:
  """Which rows of a training-file chunk belong to the validation split (all False without a holdout)."""
  n = chunk.table.num_rows
  if spec.holdout == "last":
    users = _strings(_column(chunk, spec.user_column.source))
    index = np.asarray(pc.fill_null(pc.index_in(users, value_set=pa.array(held.users, pa.string())), -1), np.int64)
    lengths = np.asarray(held.lengths + (-1,), np.int64)  # index -1 reads the -1 that no length equals
    return (index >= 0) & (_history_lengths(spec, chunk) == lengths[index])
  if spec.holdout == "users":
    if not spec.user_column.source:  # one user: hold out a share of the rows instead
      return (
        _share([f"{Path(chunk.path).name}:{line}" for line in chunk.lines.tolist()], spec.seed) < spec.holdout_fraction
      )
    users = _strings(_column(chunk, spec.user_column.source))
    uniq = pc.unique(users)
    chosen = uniq.filter(pa.array(_share(uniq.to_pylist(), spec.seed) < spec.holdout_fraction))
    return np.asarray(pc.fill_null(pc.is_in(users, value_set=chosen), False))
  return np.zeros(n, bool)


# ----------------------------------------------------------------------------------------- pass 1


def count_part(spec: Spec, part: delimited.Part, held: Held | None = None, full: Spec | None = None) -> dict[str, Any]:
  """Value counts per vocabulary and numeric sums of `spec`'s columns in one training part; its
  validation rows are left out (nothing is fitted on them). `full`: the data set's whole spec, when
  `spec` is a subset of its columns (rows are read and held out by the whole spec)."""
  full = full or spec
  counts: dict[str, dict[str, int]] = {v: {} for v in spec.vocabs()}
  sums = {c.feature: [0, 0.0, 0.0] for c in spec.features("numeric")}
  rows = 0
  bad = delimited.BadRows(spec.max_bad_rows)
  unit = "row" if spec.fmt is None else "line"
  for chunk in chunks(full, part, bad):
    chunk = _take(chunk, ~held_out(full, chunk, held))
    rows += chunk.table.num_rows
    for c in spec.features():
      if c.kind == "numeric":
        values = _numeric(chunk, c, bad, unit)[0]
        finite = values[np.isfinite(values)]
        s = sums[c.feature]
        s[0], s[1], s[2] = s[0] + len(finite), s[1] + float(finite.sum()), s[2] + float((finite**2).sum())
        continue
      array = _column(chunk, c.source)
      values = pc.list_flatten(_tokens(array, c.separator)) if c.kind == "sequence" else _strings(array)
      vc = pc.value_counts(values.filter(pc.not_equal(values, "")))
      target = counts[c.vocab]
      for value, n in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()):
        target[value] = target.get(value, 0) + n
  return {"counts": counts, "sums": sums, "rows": rows}


def merge_counts(results: list[dict[str, Any]], spec: Spec) -> tuple[dict[str, list[str]], dict[str, tuple]]:
  vocabs: dict[str, list[str]] = {}
  for v in spec.vocabs():
    total: dict[str, int] = {}
    for r in results:
      for value, n in r["counts"][v].items():
        total[value] = total.get(value, 0) + n
    vocabs[v] = sorted(total, key=lambda value: (-total[value], value))
  numeric = {}
  for c in spec.features("numeric"):
    n, s, s2 = (sum(r["sums"][c.feature][i] for r in results) for i in range(3))
    mean = s / n if n else 0.0
    std = math.sqrt(max(s2 / n - mean * mean, 0.0)) if n else 1.0
    numeric[c.feature] = (mean, std if std > 1e-12 else 1.0)
  return vocabs, numeric


# ----------------------------------------------------------------------------------------- pass 2


@functools.lru_cache(maxsize=4)
def _vocab_arrays(directory: str, names: tuple[str, ...]) -> dict[str, pa.Array]:
  return {n: pa.array(json.loads((Path(directory) / "vocab" / f"{n}.json").read_text()), pa.string()) for n in names}


def _ids(values: pa.Array, vocab: pa.Array) -> np.ndarray:
  return np.asarray(pc.fill_null(pc.index_in(values, value_set=vocab), -1), np.int64) + 1


def group_field(spec: Spec) -> str:
  """The name of the stored user-group field: `user_group`, with "_" appended while a column's feature
  already has that name."""
  name, taken = GROUP_FIELD, {c.feature for c in spec.columns}
  while name in taken:
    name += "_"
  return name


def group_parts(spec: Spec, parts: dict[str, list[delimited.Part]]) -> list[delimited.Part]:
  """The parts whose users may be missing from the user vocabulary, in the order their group ids are
  given: the training parts when users are held out of them (holdout "users") or the vocabulary is given,
  then the validation and test parts. None for data without a user column (one user, always known)."""
  if not spec.user_column.source:
    return []
  train = spec.holdout == "users" or spec.user_column.vocab in dict(spec.given_vocabs)
  return (parts.get("train", []) if train else []) + parts.get("valid", []) + parts.get("test", [])


def unseen_users(spec: Spec, directory: str, part: delimited.Part) -> list[str]:
  """The non-empty user keys of one part that the user vocabulary lacks, in order of first appearance.
  Rows are read leniently: bad rows are the encoding pass's to count or refuse (the key of a row it then
  drops only leaves a group id no row uses)."""
  user = spec.user_column
  vocab = _vocab_arrays(directory, (user.vocab,))[user.vocab]
  found: dict[str, None] = {}
  for chunk in delimited.read(part, spec.fmt, delimited.BadRows(sys.maxsize), (user.source,)):
    if user.source not in chunk.table.column_names:
      continue  # the encoding pass names the missing column
    keys = _strings(_column(chunk, user.source))
    keys = keys.filter(pc.and_(pc.not_equal(keys, ""), pc.invert(pc.is_in(keys, value_set=vocab))))
    found.update(dict.fromkeys(keys.to_pylist()))
  return list(found)


def find_groups(spec: Spec, parts: dict[str, list[delimited.Part]], directory: Path, desc: str) -> int:
  """Writes `directory`/user_groups.json (the raw user keys missing from the user vocabulary, which
  vocab/ must already hold, in order of first appearance); returns how many."""
  scan = group_parts(spec, parts)
  found = (
    shards.parallel_map(
      functools.partial(unseen_users, spec, str(directory)), scan, desc=f"{desc}: users unseen in training"
    )
    if scan
    else []
  )
  keys = list(dict.fromkeys(k for part in found for k in part))
  shards.write_text(directory / GROUPS_FILE, json.dumps(keys))
  _group_array.cache_clear()
  return len(keys)


@functools.lru_cache(maxsize=4)
def _group_array(directory: str) -> pa.Array:
  path = Path(directory) / GROUPS_FILE
  return pa.array(json.loads(path.read_text()) if path.exists() else [], pa.string())


def schema_of(spec: Spec, sizes: dict[str, int], embed_user_id: bool, unseen: int = 0) -> FeatureSchema:
  """The data set's schema; `unseen`: the raw user keys missing from the user vocabulary (they widen the
  user-group field, which is stored and never embedded)."""
  feats = []
  for c in spec.features():
    embed = embed_user_id if c.feature == spec.user_key else True
    if c.kind == "numeric":
      feats.append(Feature(c.feature, c.group, "numeric", embed=embed))
    else:
      feats.append(Feature(c.feature, c.group, c.kind, max(2, sizes[c.vocab] + 1), c.vocab, embed=embed))
  users = sizes[spec.user_column.vocab]
  feats.append(Feature(group_field(spec), "user", "categorical", max(2, users + 1 + unseen), embed=False))
  return FeatureSchema(tuple(feats), user_key=spec.user_key, max_len=spec.max_len)


def _encode_chunk(
  spec: Spec,
  chunk: delimited.Chunk,
  vocabs: dict[str, pa.Array],
  numeric: dict[str, tuple],
  bad: delimited.BadRows,
  acc: dict[str, list],
  unseen: pa.Array,
  counted: dict[str, dict[str, int]],
) -> None:
  """Appends the chunk's columns to `acc`; adds its unseen values (per feature) to counted["oov"] and its
  missing or non-finite numbers to counted["nonfinite"]."""
  unit = "row" if spec.fmt is None else "line"
  n = chunk.table.num_rows
  label = _column(chunk, spec.label.source)
  if pa.types.is_string(label.type) or pa.types.is_large_string(label.type):
    acc["label"].append(np.asarray(pc.starts_with(pc.utf8_trim_whitespace(label), "1"), np.uint8))
  else:
    acc["label"].append(np.asarray(pc.cast(pc.cast(label, pa.float64()), pa.int64()), np.uint8))
  lengths = None
  for c in spec.features():
    array = _column(chunk, c.source)
    if c.kind == "numeric":
      values = _numeric(chunk, c, bad, unit)[0]
      counted["nonfinite"][c.feature] += int(np.isnan(values).sum())
      mean, std = numeric[c.feature]
      acc[c.feature].append(np.where(np.isnan(values), 0.0, (values - mean) / std).astype(np.float32))
    elif c.kind == "categorical":
      strings = _strings(array)
      ids = _ids(strings, vocabs[c.vocab])
      counted["oov"][c.feature] += int(((ids == 0) & np.asarray(pc.not_equal(strings, ""))).sum())
      acc[c.feature].append(ids)
      if c.feature == spec.user_key:  # the raw key's group: its id, else n + 1 + its place among the unseen
        extra = np.asarray(pc.fill_null(pc.index_in(strings, value_set=unseen), -1), np.int64)
        acc[group_field(spec)].append(np.where((ids == 0) & (extra >= 0), len(vocabs[c.vocab]) + 1 + extra, ids))
    else:
      lists = _tokens(array, c.separator)
      full = _lengths(lists)
      flat = pc.list_flatten(lists)
      ids = _ids(flat, vocabs[c.vocab])
      counted["oov"][c.feature] += int(((ids == 0) & np.asarray(pc.not_equal(flat, ""))).sum())
      keep = np.minimum(full, spec.max_len)
      ends = np.cumsum(full)
      starts = ends - full
      pos = np.arange(spec.max_len)[None, :]
      valid = pos < keep[:, None]
      if c.newest_first:  # entries 0..keep-1 are the most recent; store them oldest first
        index = starts[:, None] + (keep[:, None] - 1 - pos)
      else:
        index = (ends - keep)[:, None] + pos
      mat = np.where(valid, ids[np.clip(index, 0, max(len(ids) - 1, 0))] if len(ids) else 0, 0)
      acc[c.feature].append(mat.astype(np.int64))
      lengths = full
  acc["_hist_full"].append(lengths if lengths is not None else np.zeros(n, np.int64))
  acc["_lines"].append(chunk.lines)


def _stack(acc: dict[str, list], spec: Spec) -> dict[str, np.ndarray]:
  group = group_field(spec)
  out = {group: np.concatenate(acc[group]) if acc[group] else np.zeros(0, np.int64)}
  for c in spec.features():
    parts = acc[c.feature]
    width = (spec.max_len,) if c.kind == "sequence" else ()
    out[c.feature] = np.concatenate(parts) if parts else np.zeros((0,) + width, np.int64)
  out["label"] = np.concatenate(acc["label"]) if acc["label"] else np.zeros(0, np.uint8)
  full = np.concatenate(acc["_hist_full"]) if acc["_hist_full"] else np.zeros(0, np.int64)
  out["hist_len"] = np.minimum(full, spec.max_len)
  out["_hist_full"] = full
  return out


def _related(spec: Spec, cols: dict[str, np.ndarray]) -> tuple[int, int]:
  """(rows whose candidate shares no aligned value with its kept history, rows whose first item field
  (the item id) is in its history), known values only."""
  items = [c for c in spec.features("categorical") if c.group == "item"]
  seqs = {c.vocab: c for c in spec.features("sequence")}
  pairs = [(i, seqs[i.vocab]) for i in items if i.vocab in seqs]
  n = len(cols["label"])
  if not pairs or not n:
    return 0, 0
  related = np.zeros(n, bool)
  first = None
  for item, seq in pairs:
    hit = ((cols[seq.feature] == cols[item.feature][:, None]) & (cols[item.feature][:, None] > 0)).any(1)
    related |= hit
    first = hit if first is None else first
  return int((~related).sum()), int(first.sum())


@dataclasses.dataclass
class ShardStats:
  """What a shard's rows hold, per split where keyed by split; `merge` adds two shards' statistics (a
  data set's are every shard's merged). Stored as JSON by `shards.build` (`to_dict` / `from_dict`)."""

  blocks: dict[str, list[int]]  # split -> samples per block, in file order
  rows: dict[str, int]
  positives: dict[str, int]
  oov: dict[str, dict[str, int]]  # split -> feature -> values unseen in training (empty values not counted)
  nonfinite: dict[str, dict[str, int]]  # split -> numeric feature -> missing, NaN or infinite values
  unrelated: int = 0  # rows whose candidate shares no value with its kept history
  candidate_in_history: int = 0  # rows whose item id is in its history
  longer: int = 0  # rows whose history is longer than max_len
  dropped_train_rows: int = 0  # the training remainder under one block
  hist_hist: list[int] = dataclasses.field(default_factory=lambda: [0])  # rows per full history length
  bad_rows: dict[str, Any] = dataclasses.field(default_factory=lambda: {"count": 0, "examples": []})

  @classmethod
  def empty(cls, spec: Spec) -> "ShardStats":
    return cls(
      blocks={s: [] for s in shards.SPLITS},
      rows={s: 0 for s in shards.SPLITS},
      positives={s: 0 for s in shards.SPLITS},
      oov={s: {c.feature: 0 for c in spec.features() if c.kind != "numeric"} for s in shards.SPLITS},
      nonfinite={s: {c.feature: 0 for c in spec.features("numeric")} for s in shards.SPLITS},
    )

  def merge(self, other: "ShardStats") -> "ShardStats":
    def add(a: dict, b: dict) -> dict:
      return {k: add(a[k], b[k]) if isinstance(a[k], dict) else a[k] + b[k] for k in a}

    width = max(len(self.hist_hist), len(other.hist_hist))
    hist = [
      (self.hist_hist[i] if i < len(self.hist_hist) else 0) + (other.hist_hist[i] if i < len(other.hist_hist) else 0)
      for i in range(width)
    ]
    return ShardStats(
      blocks=add(self.blocks, other.blocks),  # list + list: the blocks in shard order
      rows=add(self.rows, other.rows),
      positives=add(self.positives, other.positives),
      oov=add(self.oov, other.oov),
      nonfinite=add(self.nonfinite, other.nonfinite),
      unrelated=self.unrelated + other.unrelated,
      candidate_in_history=self.candidate_in_history + other.candidate_in_history,
      longer=self.longer + other.longer,
      dropped_train_rows=self.dropped_train_rows + other.dropped_train_rows,
      hist_hist=hist,
      bad_rows={
        "count": self.bad_rows["count"] + other.bad_rows["count"],
        "examples": (self.bad_rows["examples"] + other.bad_rows["examples"])[:10],
      },
    )

  def add_split(self, spec: Spec, split: str, cols: dict[str, np.ndarray], counted: dict[str, dict[str, int]]) -> None:
    """Counts the rows `cols` a split of the shard keeps (in their stored order)."""
    n = len(cols["label"])
    self.blocks[split] = [min(spec.block_size, n - s) for s in range(0, n, spec.block_size)]
    self.rows[split] = n
    self.positives[split] = int(cols["label"].sum())
    self.oov[split], self.nonfinite[split] = counted["oov"], counted["nonfinite"]
    unrelated, inside = _related(spec, cols)
    self.unrelated += unrelated
    self.candidate_in_history += inside
    full = cols["_hist_full"]
    counts = np.bincount(full, minlength=len(self.hist_hist)).tolist()
    self.hist_hist = [a + b for a, b in zip(self.hist_hist + [0] * (len(counts) - len(self.hist_hist)), counts)]
    self.longer += int((full > spec.max_len).sum())

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "ShardStats":
    return cls(**d)

  @classmethod
  def merged(cls, dicts: list[dict[str, Any]]) -> "ShardStats":
    return functools.reduce(cls.merge, map(cls.from_dict, dicts))


def write_shard(
  spec: Spec,
  plan: list[dict[str, list[delimited.Part]]],
  directory: Path,
  numeric: dict[str, tuple],
  index: int,
  held: Held | None = None,
) -> dict[str, Any]:
  """Shard `index`: its parts of every split -> ids -> blocks; returns the shard's `ShardStats` as a
  dict. With a holdout, the validation split is the held-out rows of the shard's training parts."""
  vocabs = _vocab_arrays(str(directory), tuple(spec.vocabs()))
  unseen = _group_array(str(directory))
  bad = delimited.BadRows(spec.max_bad_rows)
  schema = schema_of(spec, {k: len(v) for k, v in vocabs.items()}, True, len(unseen))
  stats = ShardStats.empty(spec)
  for split in shards.SPLITS:
    acc: dict[str, list] = {
      k: [] for k in ["label", "_hist_full", "_lines", group_field(spec)] + [c.feature for c in spec.features()]
    }
    counted = {"oov": dict(stats.oov[split]), "nonfinite": dict(stats.nonfinite[split])}
    carved = spec.holdout and split in ("train", "valid")
    for part in plan[index].get("train" if carved else split, []):
      # the training parts are read twice when carving: count their bad rows on the train pass only
      for chunk in chunks(spec, part, delimited.BadRows(spec.max_bad_rows) if carved and split == "valid" else bad):
        if carved:
          mask = held_out(spec, chunk, held)
          chunk = _take(chunk, mask if split == "valid" else ~mask)
        _encode_chunk(spec, chunk, vocabs, numeric, bad, acc, unseen, counted)
    cols = _stack(acc, spec)
    n = len(cols["label"])
    order = np.arange(n)
    if split == "train":
      order = np.random.default_rng([spec.seed, index, 314]).permutation(n)
      stats.dropped_train_rows = n % spec.block_size
      order = order[: n - n % spec.block_size]
    blocks = []
    for start in range(0, len(order), spec.block_size):
      rows = order[start : start + spec.block_size]
      blocks.append(records.encode_block(schema, {k: v[rows] for k, v in cols.items() if not k.startswith("_")}))
    if blocks:
      shards.write_records(shards.shard_path(directory, split, index, len(plan)), blocks)
    stats.add_split(spec, split, {k: v[order] for k, v in cols.items()}, counted)
  stats.bad_rows = {"count": bad.count, "examples": bad.examples}
  return stats.to_dict()


def user_groups(spec: Spec, unseen: int) -> dict[str, Any]:
  """stats["user_groups"]: the group field's name and how many raw user keys are missing from the user
  vocabulary (each its own group)."""
  return {"field": group_field(spec), "unseen_users": unseen}


def _percentile(hist: list[int], q: float) -> float:
  counts = np.asarray(hist, np.float64)
  if counts.sum() == 0:
    return 0.0
  return float(np.searchsorted(np.cumsum(counts) / counts.sum(), q / 100.0))


def summarize(
  spec: Spec, vocabs: dict[str, list[str]], numeric: dict[str, tuple], shard_stats: list[dict], unseen: int = 0
) -> dict:
  st = ShardStats.merged(shard_stats)
  total = max(1, sum(st.rows.values()))
  summary = {
    "rows": st.rows,
    "vocabularies": {v: len(values) for v, values in vocabs.items()},
    "user_groups": user_groups(spec, unseen),
    "label_rate": {s: st.positives[s] / max(1, st.rows[s]) for s in shards.SPLITS},
    "history_length_percentiles": {str(q): _percentile(st.hist_hist, q) for q in (50, 90, 99)},
    "share_histories_longer_than_max_len": st.longer / total,
    "share_candidates_unrelated_to_history": st.unrelated / total,
    "share_candidates_in_history": st.candidate_in_history / total,
    "oov": st.oov,
    "nonfinite_numeric": st.nonfinite,
    "numeric_standardisation": {k: {"mean": m, "std": sd} for k, (m, sd) in numeric.items()},
    "dropped_train_rows": st.dropped_train_rows,
    "bad_rows": st.bad_rows,
  }
  if st.bad_rows["count"] > spec.max_bad_rows:  # each worker allows max_bad_rows: the total decides
    raise DataError(
      f"{st.bad_rows['count']} bad rows, more than data.max_bad_rows={spec.max_bad_rows}; first: "
      f"{st.bad_rows['examples'][0]}; {delimited.SKIP_HINT}"
    )
  return summary


# ------------------------------------------------------------------------------------------ build


def plan_shards(parts: dict[str, list[delimited.Part]]) -> list[dict[str, list[delimited.Part]]]:
  """One shard per training part; test parts dealt round robin (at least one shard)."""
  count = max(1, len(parts.get("train", [])))
  plan: list[dict[str, list[delimited.Part]]] = [{s: [] for s in shards.SPLITS} for _ in range(count)]
  for split in shards.SPLITS:
    for i, part in enumerate(parts.get(split, [])):
      plan[i % count][split].append(part)
  return plan


def stamp(paths: Iterable[str | os.PathLike]) -> list[list]:
  return [[str(Path(p).resolve()), Path(p).stat().st_size, Path(p).stat().st_mtime_ns] for p in paths]


def build(
  spec: Spec,
  inputs: dict[str, list[str]],
  cache_root: str,
  part_bytes: int,
  embed_user_id: bool,
  extra: dict[str, Any] | None = None,
  desc: str = "converting",
) -> tuple[Path, dict[str, Any]]:
  """Converts (or reuses) `inputs` {split: [files]}; returns the data set directory and its meta."""
  if not inputs.get("train"):
    raise DataError(f"{spec.name}: no training files")
  params = {
    "converter": VERSION,
    "spec": dataclasses.asdict(spec),
    "inputs": {s: stamp(inputs.get(s, [])) for s in shards.SPLITS},
    "part_bytes": part_bytes,
    **(extra or {}),
  }
  params = json.loads(json.dumps(params))  # as meta.json will hold it (tuples become lists)
  directory = shards.dataset_dir(cache_root, spec.name, params)
  meta = shards.load_meta(directory)
  if meta is None or meta.get("params") != params:
    parts = {
      s: [
        p
        for f in inputs.get(s, [])
        for p in (delimited.parquet_parts(f) if spec.fmt is None else delimited.text_parts(f, spec.fmt, part_bytes))
      ]
      for s in shards.SPLITS
    }
    if not parts["train"]:
      raise DataError(f"{', '.join(inputs['train'])}: no training rows")
    held = None
    if spec.holdout == "last":
      held = merge_held(
        shards.parallel_map(
          functools.partial(last_counts, spec), parts["train"], desc=f"{desc}: each user's last training sample"
        )
      )
    given = dict(spec.given_vocabs)
    numeric_spec = dataclasses.replace(
      spec, columns=tuple(c for c in spec.columns if c.kind in ("label", "numeric") or c.vocab not in given)
    )
    counted = shards.parallel_map(
      functools.partial(count_part, numeric_spec, held=held, full=spec), parts["train"], desc=f"{desc}: vocabularies"
    )
    vocabs, numeric = merge_counts(counted, numeric_spec)
    for v, path in given.items():
      vocabs[v] = json.loads(Path(path).read_text())
    if sum(r["rows"] for r in counted) == 0:
      raise DataError(f"{', '.join(inputs['train'])}: no valid training rows")
    (directory / "vocab").mkdir(parents=True, exist_ok=True)
    for v, values in vocabs.items():
      shards.write_text(directory / "vocab" / f"{v}.json", json.dumps(values))
    _vocab_arrays.cache_clear()
    unseen = find_groups(spec, parts, directory, desc)
    schema = schema_of(spec, {k: len(v) for k, v in vocabs.items()}, True, unseen)
    plan = plan_shards(parts)
    meta = shards.build(
      directory,
      schema,
      params,
      len(plan),
      functools.partial(write_shard, spec, plan, directory, numeric, held=held),
      lambda stats: summarize(spec, vocabs, numeric, stats, unseen),
      desc=f"{desc}: shards",
    )
  schema = schema_of(spec, meta["stats"]["vocabularies"], embed_user_id, meta["stats"]["user_groups"]["unseen_users"])
  return directory, {**meta, "schema": schema.to_dict()}


def encode_records(trained: Path, files: list[str], cache_root: str, part_bytes: int) -> tuple[Path, dict[str, Any]]:
  """`files` (in the layout the data set `trained` was converted from) -> a data set whose test split
  holds every row, in file order, encoded with `trained`'s vocabularies and numeric standardisation
  (values it never saw are OOV id 0; user keys it never saw get user groups of their own, numbered for
  these files). For scoring: no row may be dropped, so a bad row is an error whatever
  data.max_bad_rows says; the label column must be present, its values are not used beyond being 0/1.
  Cached like a conversion."""
  meta = shards.load_meta(Path(trained))
  if meta is None or "spec" not in meta.get("params", {}):
    raise DataError(f"{trained}: not a data set converted from files (no spec in its meta.json)")
  spec = dataclasses.replace(Spec.from_dict(meta["params"]["spec"]), max_bad_rows=0, holdout="")
  numeric = {k: (v["mean"], v["std"]) for k, v in meta["stats"]["numeric_standardisation"].items()}
  params = {"converter": VERSION, "encoded_with": Path(trained).name, "inputs": stamp(files), "part_bytes": part_bytes}
  directory = shards.dataset_dir(cache_root, f"{spec.name}-records", params)
  done = shards.load_meta(directory)
  if done is not None and done.get("params") == params:
    return directory, done
  parts = [
    p
    for f in files
    for p in (delimited.parquet_parts(f) if spec.fmt is None else delimited.text_parts(f, spec.fmt, part_bytes))
  ]
  if not parts:
    raise DataError(f"{', '.join(files)}: no rows to score")
  (directory / "vocab").mkdir(parents=True, exist_ok=True)
  for vocab in Path(trained, "vocab").glob("*.json"):
    shards.write_text(directory / "vocab" / vocab.name, vocab.read_text())
  _vocab_arrays.cache_clear()
  unseen = find_groups(spec, {"test": parts}, directory, "encoding records")
  schema = schema_of(spec, meta["stats"]["vocabularies"], True, unseen)
  plan = [{"train": [], "test": parts}]  # one shard: the rows stay in file order
  meta = shards.build(
    directory,
    schema,
    params,
    1,
    functools.partial(write_shard, spec, plan, directory, numeric),
    lambda shard_stats: {
      "rows": (st := ShardStats.merged(shard_stats)).rows,
      "oov": st.oov,
      "nonfinite_numeric": st.nonfinite,
      "user_groups": user_groups(spec, unseen),
    },
    desc="encoding records",
  )
  return directory, meta
