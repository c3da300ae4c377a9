"""The one typed feature schema: it drives the embedding tables, the record codec and the model inputs.

Groups follow MIAN: `item` (the candidate, e_i), `behaviour` (the history, e_b, T positions),
`user` (profile fields, e_u, J of them) and `context` (e_c, K of them).
Kinds: `categorical` (one id), `numeric` (one float, embedded as value x learned vector) and
`sequence` (up to `max_len` ids, the behaviour group; every behaviour field has the same length).
Id 0 is reserved for padding / out-of-vocabulary, so a vocabulary of n real values has size n + 1.
A behaviour field whose `table` is also used by an item field (item id, category) lines up with that
item field; other behaviour fields (e.g. the age of the behaviour) are side information added to it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Literal

import numpy as np

Group = Literal["item", "behaviour", "user", "context"]
Kind = Literal["categorical", "numeric", "sequence"]
GROUPS: tuple[str, ...] = ("item", "behaviour", "user", "context")


def id_dtype(vocab_size: int) -> np.dtype:
  """The smallest unsigned integer type that holds ids 0..vocab_size-1."""
  for dtype in (np.uint8, np.uint16, np.uint32):
    if vocab_size - 1 <= np.iinfo(dtype).max:
      return np.dtype(dtype)
  return np.dtype(np.uint64)


@dataclasses.dataclass(frozen=True)
class Feature:
  name: str
  group: Group
  kind: Kind
  vocab_size: int = 0  # ids 0..vocab_size-1 (0 = padding / OOV); unused for numeric
  table: str = ""  # embedding table; features naming the same table share it ("" = own table)
  embed: bool = True  # False: stored and decoded (e.g. the user id for gAUC) but not a model input

  def __post_init__(self):
    if self.group not in GROUPS:
      raise ValueError(f"feature {self.name!r}: group must be one of {GROUPS}, got {self.group!r}")
    if (self.kind == "sequence") != (self.group == "behaviour"):
      raise ValueError(f"feature {self.name!r}: behaviour fields are sequences and only they are")
    if self.kind == "numeric" and self.group == "item":
      raise ValueError(f"feature {self.name!r}: the candidate item takes categorical fields only")
    if self.kind != "numeric" and self.vocab_size < 2:
      raise ValueError(f"feature {self.name!r}: vocab_size must be >= 2 (id 0 is padding), got {self.vocab_size}")

  @property
  def table_name(self) -> str:
    return self.table or self.name

  @property
  def dtype(self) -> np.dtype:
    return np.dtype(np.float32) if self.kind == "numeric" else id_dtype(self.vocab_size)


@dataclasses.dataclass(frozen=True)
class FeatureSchema:
  features: tuple[Feature, ...]
  user_key: str  # the field that identifies a user (for gAUC)
  max_len: int  # T: the longest behaviour history stored

  def __post_init__(self):
    names = [f.name for f in self.features]
    if len(set(names)) != len(names):
      raise ValueError(f"duplicate feature names in schema: {names}")
    if self.user_key not in names:
      raise ValueError(f"schema user_key {self.user_key!r} is not a feature")
    if not self.group("item"):
      raise ValueError("schema needs at least one item field (the candidate)")
    if not self.group("behaviour"):
      raise ValueError("schema needs at least one behaviour field")

  def group(self, group: str) -> tuple[Feature, ...]:
    """The model inputs of one group (features with embed=False are left out)."""
    return tuple(f for f in self.features if f.group == group and f.embed)

  def __getitem__(self, name: str) -> Feature:
    for f in self.features:
      if f.name == name:
        return f
    raise KeyError(name)

  @property
  def tables(self) -> dict[str, int]:
    """Embedding table name -> rows (the largest vocabulary among the features sharing it)."""
    out: dict[str, int] = {}
    for f in self.features:
      if f.kind != "numeric" and f.embed:
        out[f.table_name] = max(out.get(f.table_name, 0), f.vocab_size)
    return out

  @property
  def numeric(self) -> tuple[Feature, ...]:
    return tuple(f for f in self.features if f.kind == "numeric" and f.embed)

  def aligned_behaviours(self) -> tuple[tuple[Feature, Feature], ...]:
    """(item field, behaviour field) pairs sharing a table, in item-field order."""
    pairs = []
    for item in self.group("item"):
      for beh in self.group("behaviour"):
        if beh.table_name == item.table_name:
          pairs.append((item, beh))
          break
      else:
        raise ValueError(f"item field {item.name!r} has no behaviour field sharing its table")
    return tuple(pairs)

  def side_behaviours(self) -> tuple[Feature, ...]:
    aligned = {b.name for _, b in self.aligned_behaviours()}
    return tuple(f for f in self.group("behaviour") if f.name not in aligned)

  def to_dict(self) -> dict:
    return {
      "features": [dataclasses.asdict(f) for f in self.features],
      "user_key": self.user_key,
      "max_len": self.max_len,
    }

  @classmethod
  def from_dict(cls, d: dict) -> "FeatureSchema":
    return cls(tuple(Feature(**f) for f in d["features"]), d["user_key"], d["max_len"])

  def fingerprint(self) -> str:
    return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
