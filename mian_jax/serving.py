"""Scores samples with a model exported by `export.py`: jax, numpy and the standard library only.

    scorer = Scorer.load("export_dir")
    probs = scorer.score_ids(batch)      # already-encoded inputs, as the eval batches hold them
    probs = scorer.score(records)        # raw values, a list of dicts (one per sample), as in the user's files

No model code, Flax, or training code is imported: the function is `jax.export`'s serialized
StableHLO, called with the parameters from `params.npz` (put on the device once) and a batch of any
size >= 1 (each new size compiles once; every row is scored independently of its batch mates: Dice
layers (DIN, DIEN, MIAN's default MLP) use the running moments exported with the parameters).

Decisions:
- `score_ids` takes a dict of arrays holding at least the manifest's inputs (more keys, e.g. `label`,
  `weight`, `user_id`, are ignored): ids int [B], numeric [B], sequences [B, max_len] right-padded
  oldest first, `hist_len` [B]. An id outside [0, vocab_size) becomes 0 (out of vocabulary) instead
  of reaching the lookup, a non-finite numeric value 0.0 (the converters' value for missing), and
  `hist_len` is clipped to [0, max_len].
- `score` encodes as the converters do. A feature with a vocabulary (`vocab/<name>.json`: a list,
  value k has id k + 1, or a {value: id} map) maps its values through it, compared as text (so 42 and
  "42" are the same value, 42.0 too; surrounding blanks are dropped); an unknown or missing (None)
  value is id 0 (OOV). A feature without one (e.g. the generated commercial set, whose values are
  ids) takes integer ids (ints, integral floats or their text); an id outside [0, vocab_size) or a
  missing one (None) is 0 (OOV), and anything else (1.5, "abc", NaN) is an error naming the record and
  the feature. `score_ids` follows the same rule: ids of a float array must be integral.
- A history is a list (None = empty), oldest first as records.py stores them, unless the manifest
  says the user's files list it newest first (a tabular column with `order = "newest_first"`), in
  which case it is taken in that order and reversed. A history that is not a list, or that holds a
  missing entry (None or NaN), is an error naming the record, the feature and the position (a missing
  behaviour is not one). The most recent max_len entries are kept
  (the end of an oldest-first list), placed from position 0 and padded with 0 on the right;
  `hist_len` is the kept length. All histories of one sample must have the same length (the
  converters refuse such rows too). A string is refused rather than split into characters.
- A numeric value goes through the converter's transform when the manifest has one (log1p of
  max(x, 0), then (x - mean) / std); None, NaN or infinity becomes 0.0, as in conversion; a value that
  is not a number ("abc") is an error naming the record and the feature.
- A record without one of the model's features is an error (a misspelt key would otherwise score
  every sample as OOV); keys that are not inputs are ignored. A categorical value is None, text or a
  number, with a vocabulary or without: a bool, a list or a dict is an error naming the record and the
  feature. `score` takes a list of records (a single dict is refused with how to pass one) and works
  through it `batch_size` records at a time (default 8192), so its memory does not grow with the list.
- `load` checks the export before reading it: every file the manifest names must lie inside the export
  folder (no absolute path, no `..`), and match the SHA-256 the manifest lists for it; the manifest must
  match its own digest (an edited vocabulary or `mean` would change every probability without a word, a
  flipped bit in the function can crash the process that deserializes it). A changed file is a ValueError
  naming it. Exports written before the checksums load unchecked (their paths are still confined).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import numpy as np

FORMAT = "mian_jax.export/1"
BATCH = 8192  # records Scorer.score encodes and scores per call


def _renumbered(message: str, offset: int) -> str:
  """`record i` in a chunk's message as the record's number in the caller's list."""
  import re

  return re.sub(r"^record (\d+)", lambda m: f"record {int(m.group(1)) + offset}", message)


def _key(value: Any) -> str:
  """A value as the vocabularies compare it: text, blanks stripped, integral floats without '.0'."""
  if isinstance(value, (float, np.floating)) and float(value).is_integer():
    value = int(value)
  if isinstance(value, np.generic):
    value = value.item()
  return str(value).strip()


def _load_vocab(path: Path) -> dict[str, int]:
  values = json.loads(path.read_text())
  if isinstance(values, dict):
    return {_key(k): int(v) for k, v in values.items()}
  return {_key(v): i + 1 for i, v in enumerate(values)}


def _is_scalar(value: Any) -> bool:
  """A value a vocabulary can hold: None, text or a number (not a bool, a list, a dict, ...)."""
  if isinstance(value, (bool, np.bool_)):
    return False
  return value is None or isinstance(value, (str, int, float, np.integer, np.floating, np.str_))


def _as_id(value: Any) -> int:
  """An integer id from an int, an integral float or the text of an int; -1 (OOV) for None; ValueError
  for anything else (a non-integral or non-finite number, other text, a bool)."""
  if value is None:
    return -1
  if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    if math.isfinite(value) and float(value).is_integer():
      return int(value)
    raise ValueError(f"{value!r} is not an integer id")
  if isinstance(value, (str, bytes)):
    try:
      return int(value.strip())
    except ValueError:
      pass
  raise ValueError(f"{value!r} is not an integer id")


def _sha256(path: Path) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def _manifest_digest(manifest: dict[str, Any]) -> str:
  held = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
  return hashlib.sha256(json.dumps(held, sort_keys=True).encode()).hexdigest()


def sealed(directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
  """`manifest` with the SHA-256 of every file under `directory` (but the manifest) and of itself."""
  manifest = json.loads(json.dumps(manifest))
  names = sorted(
    str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file() and p.name != "manifest.json"
  )
  manifest["sha256"] = {name: _sha256(directory / name) for name in names}
  manifest["manifest_sha256"] = _manifest_digest(manifest)
  return manifest


def _inside(directory: Path, name: Any) -> Path:
  """The file `name` of the export: a relative path that stays inside `directory` (ValueError otherwise)."""
  if not isinstance(name, str) or not name or Path(name).is_absolute():
    raise ValueError(f"{directory}/manifest.json names {name!r}, not a file of the export; re-export the model")
  path = (directory / name).resolve()
  if not path.is_relative_to(directory.resolve()):
    raise ValueError(f"{directory}/manifest.json names {name!r}, outside the export folder; re-export the model")
  return path


def _checked(directory: Path, manifest: dict[str, Any], names: list[str]) -> None:
  """ValueError when the manifest was edited or a file it names does not match its SHA-256."""
  sums = manifest.get("sha256")
  if sums is None and "manifest_sha256" not in manifest:
    return  # written before the checksums
  if manifest.get("manifest_sha256") != _manifest_digest(manifest) or not isinstance(sums, dict):
    raise ValueError(
      f"{directory}/manifest.json was changed after the export was written (its digest does not "
      f"match); re-export the model"
    )
  for name in names:
    path = _inside(directory, name)
    if name not in sums:
      raise ValueError(f"{directory}/{name} has no checksum in the manifest; re-export the model")
    if not path.is_file():
      raise ValueError(f"{directory}/{name} is missing; re-export the model")
    if _sha256(path) != sums[name]:
      raise ValueError(
        f"{directory}/{name} does not match its checksum (the file was changed or damaged); re-export the model"
      )


class Scorer:
  """An exported model, ready to score: `Scorer.load(directory)`."""

  def __init__(
    self,
    directory: Path,
    manifest: dict[str, Any],
    exported: jax.export.Exported,
    params: Any,
    vocabs: dict[str, dict[str, int]],
  ):
    self.directory = directory
    self.manifest = manifest
    self.inputs: dict[str, dict[str, Any]] = manifest["inputs"]
    self.max_len: int = manifest["schema"]["max_len"]
    self._exported = exported
    self._params = params
    self._vocabs = vocabs
    self._call = jax.jit(exported.call)

  @classmethod
  def load(cls, directory: str | Path) -> "Scorer":
    directory = Path(directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
      found = manifest.get("format") if isinstance(manifest, dict) else None
      raise ValueError(f"{directory}: export format {found!r}, this loader reads {FORMAT!r}")
    vocab_names = sorted({e["vocab"] for e in manifest["inputs"].values() if e.get("vocab")})
    names = [manifest["function"], manifest["params"], *vocab_names]
    for name in names:
      _inside(directory, name)
    _checked(directory, manifest, names)
    exported = jax.export.deserialize(bytearray((directory / manifest["function"]).read_bytes()))
    args_def = jax.tree_util.treedef_children(exported.in_tree)[0]  # in_tree: ((params, inputs), {})
    params_def = jax.tree_util.treedef_children(args_def)[0]
    with np.load(directory / manifest["params"]) as npz:
      leaves = [npz[k] for k in sorted(npz.files)]
    if len(leaves) != params_def.num_leaves:
      raise ValueError(f"{directory}: {len(leaves)} parameter arrays, the function takes {params_def.num_leaves}")
    for leaf, aval in zip(leaves, exported.in_avals):
      if leaf.shape != aval.shape or leaf.dtype != aval.dtype:
        raise ValueError(
          f"{directory}: a parameter of {leaf.dtype}{list(leaf.shape)} where the function takes "
          f"{aval.dtype}{list(aval.shape)}"
        )
    params = jax.device_put(jax.tree.unflatten(params_def, leaves))
    vocabs = {e["vocab"]: _load_vocab(directory / e["vocab"]) for e in manifest["inputs"].values() if e.get("vocab")}
    return cls(directory, manifest, exported, params, vocabs)

  # ------------------------------------------------------------------------------------ encoded ids

  def score_ids(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
    """Click probabilities float32 [B] of an encoded batch (see the module docstring)."""
    missing = [n for n in self.inputs if n not in batch]
    if missing:
      raise KeyError(f"the batch lacks input(s) {', '.join(missing)}; the model reads {', '.join(self.inputs)}")
    rows = np.shape(batch["hist_len"])[0] if np.ndim(batch["hist_len"]) else 0
    if rows < 1:
      raise ValueError("the batch must hold at least one row (hist_len is int [B], B >= 1)")
    inputs = {}
    for name, entry in self.inputs.items():
      x = np.asarray(batch[name])
      if x.shape != (rows, *entry["shape"]):
        raise ValueError(f"input {name!r} has shape {list(x.shape)}, expected {[rows, *entry['shape']]}")
      if entry["kind"] == "numeric":
        x = x.astype(np.float32)
        inputs[name] = np.where(np.isfinite(x), x, np.float32(0))
      elif entry["kind"] == "hist_len":
        inputs[name] = np.clip(x.astype(np.int64), 0, self.max_len).astype(np.int32)
      else:
        if np.issubdtype(x.dtype, np.floating):  # the same rule as score(): integral ids only
          bad = ~(np.isfinite(x) & (x == np.round(x)))
          if bad.any():
            row = int(np.flatnonzero(bad.reshape(rows, -1).any(axis=1))[0])
            raise ValueError(f"input {name!r} row {row}: {x[row].tolist()!r} holds an id that is not an integer")
        elif not np.issubdtype(x.dtype, np.integer):
          raise ValueError(f"input {name!r} is {x.dtype}; ids are integers")
        x = x.astype(np.int64)
        inputs[name] = np.where((x >= 0) & (x < entry["vocab_size"]), x, 0).astype(np.int32)
    return np.asarray(self._call(self._params, inputs))

  # ------------------------------------------------------------------------------------- raw values

  def _id(self, entry: dict[str, Any], value: Any) -> int:
    if entry.get("vocab"):
      if not _is_scalar(value):  # one rule with the ids: a value is text or a number, never a container
        raise ValueError(f"{value!r} is not a value of the vocabulary (text or a number)")
      i = 0 if value is None else self._vocabs[entry["vocab"]].get(_key(value), 0)
    else:
      i = _as_id(value)
    return i if 0 <= i < entry["vocab_size"] else 0

  @staticmethod
  def _numeric(entry: dict[str, Any], value: Any) -> float:
    try:
      x = math.nan if value is None or (isinstance(value, str) and not value.strip()) else float(value)
    except (TypeError, ValueError):
      raise ValueError(f"{value!r} is not a number") from None
    if entry.get("log1p") and math.isfinite(x):
      x = math.log1p(max(x, 0.0))
    if "mean" in entry:
      x = (x - entry["mean"]) / entry["std"]
    return x if math.isfinite(x) else 0.0

  @staticmethod
  def _history(values: Any) -> list[Any]:
    """A history as a list (None = empty); TypeError for a string or a scalar, ValueError for a missing
    entry (None, NaN), naming its position."""
    if values is None:
      return []
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple, np.ndarray)):
      raise TypeError(f"{values!r} is not a list; pass the history as a list, oldest first")
    values = list(values)
    for k, v in enumerate(values):
      if v is None or (isinstance(v, (float, np.floating)) and not math.isfinite(v)):
        raise ValueError(f"behaviour {k} is missing ({v!r}); leave missing behaviours out of the list")
    return values

  def encode(self, records: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Raw records -> the encoded batch `score_ids` takes (see the module docstring)."""
    n, t = len(records), self.max_len
    if n < 1:
      raise ValueError("score at least one record")
    batch = {name: np.zeros((n, *entry["shape"]), entry["dtype"]) for name, entry in self.inputs.items()}
    sequences = [name for name, entry in self.inputs.items() if entry["kind"] == "sequence"]
    for i, record in enumerate(records):
      missing = [name for name in self.inputs if name != "hist_len" and name not in record]
      if missing:
        raise KeyError(f"record {i} lacks feature(s) {', '.join(missing)}")
      lengths = set()
      for name, entry in self.inputs.items():
        try:
          if entry["kind"] == "categorical":
            batch[name][i] = self._id(entry, record[name])
          elif entry["kind"] == "numeric":
            batch[name][i] = self._numeric(entry, record[name])
          elif entry["kind"] == "sequence":
            values = self._history(record[name])
            lengths.add(len(values))
            if entry.get("newest_first"):
              values = values[::-1]
            kept = values[max(0, len(values) - t) :]  # the most recent t, oldest first
            batch[name][i, : len(kept)] = [self._id(entry, v) for v in kept]
        except (TypeError, ValueError) as e:
          raise type(e)(f"record {i}: feature {name!r}: {e}") from None
      if len(lengths) > 1:
        raise ValueError(f"record {i}: the histories {', '.join(sequences)} have different lengths {sorted(lengths)}")
      batch["hist_len"][i] = min(lengths.pop() if lengths else 0, t)
    return batch

  def score(self, records: Sequence[Mapping[str, Any]], batch_size: int = BATCH) -> np.ndarray:
    """Click probabilities float32 [len(records)] of raw records (see the module docstring), encoded and
    scored `batch_size` records at a time: memory stays flat in the number of records."""
    if isinstance(records, Mapping):
      raise TypeError("score takes a list of records (dicts); for one record, pass [record]")
    if batch_size < 1:
      raise ValueError(f"batch_size={batch_size}: give a positive number of records per call")
    n = len(records)
    if n < 1:
      raise ValueError("score at least one record")
    out = np.empty(n, np.float32)
    for lo in range(0, n, batch_size):
      try:
        out[lo : lo + batch_size] = self.score_ids(self.encode(records[lo : lo + batch_size]))
      except (KeyError, TypeError, ValueError) as e:  # the record number in the whole list, not in the chunk
        raise type(e)(_renumbered(str(e.args[0]) if e.args else str(e), lo)) from None
    return out
