"""GroupLens MovieLens (ml-100k or ml-1m layout) converted into the project's sharded block format.

Users download ml-100k or ml-1m from https://grouplens.org/datasets/movielens/ (research use; the data
is never part of this repository) and point `data.dir` at the unpacked folder. The layout is found by
file name: ml-100k `u.data` (user \\t item \\t rating \\t unix time), `u.user` (id|age|gender|occupation|zip),
`u.item` (id|title|date|video date|url|19 genre flags); ml-1m `ratings.dat` (user::item::rating::time),
`users.dat` (id::gender::age code::occupation::zip), `movies.dat` (id::title::genres joined by '|').
All files are read as latin-1.

One sample per rating, in time order per user:
  candidate   movie id + its first genre (the category)
  behaviours  the user's movies rated strictly earlier in time (ratings within the same second are not
              each other's history), the most recent `max_len` kept, oldest first, each with its movie
              id, first genre and age in days (log2 buckets: 0, 1, 2-3, 4-7, ..., >=256)
  user        user id (stored for gAUC, not embedded by default), age bucket (<18, 18-24, 25-34, 35-44,
              45-49, 50-55, 56+, as ml-1m codes it), gender, occupation, zip prefix (first character)
  context     hour and weekday of the rating (UTC)
  label       rating >= min_positive_rating
Split: each user's last `test_per_user` ratings are the test split, with data.validation=holdout the
`valid_per_user` (= test_per_user) ratings before them the validation split (at least one rating of
every user stays in train), the rest train. Vocabularies (movies, genres, occupations, zip prefixes,
genders, users) come from the training split; values unseen in training map to id 0 (padding / OOV).
gAUC groups by user_id as stored: every validation / test user keeps at least one training rating, so
none is OOV and each has an id of its own (the tabular converters, whose test users may be absent from
training, store a separate `user_group` instead). Only `encode_records` (--predict on other files) can
meet users absent from training; they share id 0 there.
Train rows are shuffled (seed `data.seed`) before being cut into whole blocks, so a batch mixes users;
the remainder (< one block) is dropped. Test rows are written in user / time order.

The converted data set is cached under `<cache root>/movielens-<layout>-<hash>/`, the hash covering the
parameters and the input files' path, size and mtime (a changed input file means a rebuild). Cache
root: $MIAN_JAX_CACHE if set, else `data_cache/` in the working directory (never the data folder,
which may be shared or read-only). Vocabularies are written as `vocab/<name>.json` (value k has id
k + 1) and statistics as `stats.json`. The files (ml-1m's ratings are 24 MB) are read whole.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from mian_jax.data import records, shards
from mian_jax.errors import DataError
from mian_jax.schema import Feature, FeatureSchema

VERSION = "movielens/1"
LAYOUTS = {"100k": ("u.data", "u.user", "u.item"), "1m": ("ratings.dat", "users.dat", "movies.dat")}
GENRES_100K = (
  "unknown",
  "Action",
  "Adventure",
  "Animation",
  "Children's",
  "Comedy",
  "Crime",
  "Documentary",
  "Drama",
  "Fantasy",
  "Film-Noir",
  "Horror",
  "Musical",
  "Mystery",
  "Romance",
  "Sci-Fi",
  "Thriller",
  "War",
  "Western",
)
AGE_EDGES = (18, 25, 35, 45, 50, 56)  # ml-1m's age groups: <18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+
AGE_BUCKETS = len(AGE_EDGES) + 1
HIST_AGE_BUCKETS = 10  # behaviour age in days: 0, 1, 2-3, 4-7, ..., 256+ (stored + 1; 0 = padding)
DOWNLOAD = "https://grouplens.org/datasets/movielens/"


@dataclasses.dataclass(frozen=True)
class Params:
  max_len: int
  block_size: int
  min_positive_rating: int
  test_per_user: int
  seed: int
  valid_per_user: int = 0  # each user's last training ratings held out as the validation split


def find_layout(folder: str | os.PathLike) -> tuple[str, dict[str, Path]]:
  """('100k' | '1m', {role: path}) for the MovieLens files in `folder`; DataError when there are none."""
  d = Path(folder)
  for layout, names in LAYOUTS.items():
    if (d / names[0]).is_file():
      missing = [n for n in names if not (d / n).is_file()]
      if missing:
        raise DataError(
          f"{d}: MovieLens {layout} layout ({names[0]} found) but {', '.join(missing)} "
          f"is missing; expected {', '.join(names)}"
        )
      return layout, dict(zip(("ratings", "users", "movies"), (d / n for n in names)))
  raise DataError(
    f"{d}: no MovieLens files found; expected ml-100k's {', '.join(LAYOUTS['100k'])} or ml-1m's "
    f"{', '.join(LAYOUTS['1m'])} (download ml-100k or ml-1m from {DOWNLOAD} and set data.dir to the folder)"
  )


def _lines(path: Path, sep: str, fields: int | None, min_fields: int | None = None) -> Iterator[tuple[int, list[str]]]:
  """(1-based line number, fields) for every non-empty line; DataError on a wrong field count."""
  word = {"\t": "tab", "|": "'|'", "::": "'::'"}[sep]
  with open(path, encoding="latin-1", newline="") as f:
    for number, line in enumerate(f, 1):
      line = line.rstrip("\r\n")
      if not line.strip():
        continue
      parts = line.split(sep)
      if fields is not None and len(parts) != fields:
        raise DataError(f"{path.name} line {number}: expected {fields} {word}-separated fields, got {len(parts)}")
      if min_fields is not None and len(parts) < min_fields:
        raise DataError(
          f"{path.name} line {number}: expected at least {min_fields} {word}-separated fields, got {len(parts)}"
        )
      yield number, parts


def _int(path: Path, number: int, what: str, text: str) -> int:
  try:
    return int(text.strip())
  except ValueError:
    raise DataError(f"{path.name} line {number}: {what} {text!r} is not an integer") from None


def age_bucket(age: int) -> int:
  """0..6 for <18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+ (ml-1m's codes 1, 18, 25, ... map to the same)."""
  return int(np.searchsorted(AGE_EDGES, age, side="right"))


def read_raw(layout: str, files: dict[str, Path]) -> dict[str, Any]:
  """Ratings as arrays (user, item, rating, time), users {id: (age bucket, gender, occupation, zip prefix)}
  and movies {id: first genre name}."""
  sep = "\t" if layout == "100k" else "::"
  cols: list[list[int]] = [[], [], [], []]
  path = files["ratings"]
  for number, parts in _lines(path, sep, 4):
    for col, what, text in zip(cols, ("user id", "movie id", "rating", "timestamp"), parts):
      col.append(_int(path, number, what, text))
  users: dict[int, tuple[int, str, str, str]] = {}
  path = files["users"]
  usep = "|" if layout == "100k" else "::"
  for number, parts in _lines(path, usep, 5):
    if layout == "100k":
      uid, age, gender, occupation, zipcode = parts
    else:
      uid, gender, age, occupation, zipcode = parts
    users[_int(path, number, "user id", uid)] = (
      age_bucket(_int(path, number, "age", age)),
      gender.strip().upper(),
      occupation.strip(),
      zipcode.strip()[:1].upper(),
    )
  movies: dict[int, str] = {}
  path = files["movies"]
  if layout == "100k":
    for number, parts in _lines(path, "|", None, min_fields=5 + len(GENRES_100K)):
      flags = parts[-len(GENRES_100K) :]
      first = next((g for g, flag in zip(GENRES_100K, flags) if flag.strip() == "1"), "(none)")
      movies[_int(path, number, "movie id", parts[0])] = first
  else:
    for number, parts in _lines(path, "::", None, min_fields=3):
      # A title could hold '::' in principle: the id is the first field, the genres the last.
      movies[_int(path, number, "movie id", parts[0])] = parts[-1].split("|")[0].strip() or "(none)"
  user, item, rating, time = (np.asarray(c, np.int64) for c in cols)
  if len(user) == 0:
    raise DataError(f"{files['ratings']}: no ratings")
  return {"user": user, "item": item, "rating": rating, "time": time, "users": users, "movies": movies}


def _vocab(values) -> dict[Any, int]:
  """Sorted distinct values -> ids 1..n (0 = padding / OOV)."""
  return {v: i + 1 for i, v in enumerate(sorted(set(values)))}


def _lookup(vocab: dict[Any, int], values) -> np.ndarray:
  return np.fromiter((vocab.get(v, 0) for v in values), np.int64, count=len(values))


def samples(raw: dict[str, Any], p: Params, vocabs: dict[str, dict[Any, int]] | None = None) -> dict[str, Any]:
  """Every rating as a sample, sorted by (user, time, movie): scalar columns, split, and the history
  pointers (`hist_end`: index where a sample's history ends, exclusive; `hist_full`: its uncapped length).
  Sequence columns are cut per block by `history`. `vocabs` (e.g. a trained data set's) replaces the
  vocabularies built from the training split; `order[k]` is the ratings-file line of sample k."""
  order = np.lexsort((raw["item"], raw["time"], raw["user"]))
  user, item, rating, time = (raw[k][order] for k in ("user", "item", "rating", "time"))
  n = len(user)
  key = user * (1 << 32) + time
  user_start = np.searchsorted(user, user, side="left")
  user_end = np.searchsorted(user, user, side="right")
  hist_end = np.searchsorted(key, key, side="left")  # strictly earlier ratings of the same user
  hist_full = hist_end - user_start
  from_end = user_end - 1 - np.arange(n)  # 0 = the user's last rating
  last_train = user_end - user_start - 1  # a user's first rating always stays in train
  test = from_end < np.minimum(p.test_per_user, last_train)
  valid = ~test & (from_end < np.minimum(p.test_per_user + p.valid_per_user, last_train))
  train = ~test & ~valid
  users, movies = raw["users"], raw["movies"]
  genre = [movies.get(int(i), "(none)") for i in item]
  profile = [users.get(int(u)) for u in user]
  vocabs = vocabs or {
    "item_id": _vocab(item[train].tolist()),
    "item_cate": _vocab(g for g, t in zip(genre, train) if t),
    "user_id": _vocab(user[train].tolist()),
    "gender": _vocab(pr[1] for pr, t in zip(profile, train) if t and pr),
    "occupation": _vocab(pr[2] for pr, t in zip(profile, train) if t and pr),
    "zip_prefix": _vocab(pr[3] for pr, t in zip(profile, train) if t and pr),
  }
  cols = {
    "label": (rating >= p.min_positive_rating).astype(np.uint8),
    "item_id": _lookup(vocabs["item_id"], item.tolist()),
    "item_cate": _lookup(vocabs["item_cate"], genre),
    "user_id": _lookup(vocabs["user_id"], user.tolist()),
    "age_bucket": np.asarray([pr[0] + 1 if pr else 0 for pr in profile], np.int64),
    "gender": _lookup(vocabs["gender"], [pr[1] if pr else None for pr in profile]),
    "occupation": _lookup(vocabs["occupation"], [pr[2] if pr else None for pr in profile]),
    "zip_prefix": _lookup(vocabs["zip_prefix"], [pr[3] if pr else None for pr in profile]),
    "hour": (time // 3600) % 24 + 1,
    "weekday": (time // 86400 + 3) % 7 + 1,  # 1970-01-01 was a Thursday; 1 = Monday .. 7 = Sunday
  }
  return {
    "cols": cols,
    "raw_item": item,
    "time": time,
    "user": user,
    "rating": rating,
    "hist_end": hist_end,
    "hist_full": hist_full,
    "test": test,
    "valid": valid,
    "train": train,
    "vocabs": vocabs,
    "order": order,
  }


def history(s: dict[str, Any], rows: np.ndarray, max_len: int) -> dict[str, np.ndarray]:
  """The behaviour columns of `rows`: [len(rows), max_len], the most recent max_len, oldest first."""
  end = s["hist_end"][rows]
  length = np.minimum(s["hist_full"][rows], max_len)
  pos = np.arange(max_len)[None, :]
  valid = pos < length[:, None]
  index = np.where(valid, (end - length)[:, None] + pos, 0)
  days = (s["time"][rows][:, None] - s["time"][index]) // 86400
  age = np.minimum(np.floor(np.log2(np.maximum(days, 0) + 1)).astype(np.int64), HIST_AGE_BUCKETS - 1) + 1
  return {
    "hist_item_id": np.where(valid, s["cols"]["item_id"][index], 0),
    "hist_item_cate": np.where(valid, s["cols"]["item_cate"][index], 0),
    "hist_age_days": np.where(valid, age, 0),
    "hist_len": length,
    "_hist_raw_item": np.where(valid, s["raw_item"][index], -1),
  }


def make_schema(vocabs: dict[str, dict], max_len: int, embed_user_id: bool = False) -> FeatureSchema:
  f = Feature
  size = {k: len(v) + 1 for k, v in vocabs.items()}
  feats = [
    f("item_id", "item", "categorical", size["item_id"], "item"),
    f("item_cate", "item", "categorical", size["item_cate"], "cate"),
    f("hist_item_id", "behaviour", "sequence", size["item_id"], "item"),
    f("hist_item_cate", "behaviour", "sequence", size["item_cate"], "cate"),
    f("hist_age_days", "behaviour", "sequence", HIST_AGE_BUCKETS + 1),
    f("user_id", "user", "categorical", max(2, size["user_id"]), embed=embed_user_id),
    f("age_bucket", "user", "categorical", AGE_BUCKETS + 1),
    f("gender", "user", "categorical", max(2, size["gender"])),
    f("occupation", "user", "categorical", max(2, size["occupation"])),
    f("zip_prefix", "user", "categorical", max(2, size["zip_prefix"])),
    f("hour", "context", "categorical", 25),
    f("weekday", "context", "categorical", 8),
  ]
  return FeatureSchema(tuple(feats), user_key="user_id", max_len=max_len)


@functools.lru_cache(maxsize=2)
def _converted(layout: str, files: tuple[tuple[str, str], ...], p: Params) -> dict[str, Any]:
  return samples(read_raw(layout, {k: Path(v) for k, v in files}), p)


def _write_shard(layout: str, files: tuple, p: Params, directory: Path, index: int) -> dict[str, Any]:
  s = _converted(layout, files, p)
  schema = make_schema(s["vocabs"], p.max_len)
  rows = {split: np.flatnonzero(s[split]) for split in shards.SPLITS}
  rng = np.random.default_rng([p.seed, 2718])
  rows["train"] = rng.permutation(rows["train"])
  rows["train"] = rows["train"][: len(rows["train"]) // p.block_size * p.block_size]  # whole blocks only
  out: dict[str, Any] = {"blocks": {}, "rows": {}, "positives": {}, "unrelated": 0, "seen": 0}
  for split in shards.SPLITS:
    r = rows[split]
    blocks = []
    for start in range(0, len(r), p.block_size):
      b = r[start : start + p.block_size]
      hist = history(s, b, p.max_len)
      cols = {k: v[b] for k, v in s["cols"].items()}
      cols.update(hist)
      blocks.append(records.encode_block(schema, cols))
      out["seen"] += int((hist["_hist_raw_item"] == s["raw_item"][b][:, None]).any(1).sum())
      same_genre = (hist["hist_item_cate"] == cols["item_cate"][:, None]) & (hist["_hist_raw_item"] >= 0)
      out["unrelated"] += int((~same_genre.any(1)).sum())
    shards.write_records(shards.shard_path(directory, split, index, 1), blocks)
    out["blocks"][split] = [min(p.block_size, len(r) - s0) for s0 in range(0, len(r), p.block_size)]
    out["rows"][split] = int(len(r))
    out["positives"][split] = int(s["cols"]["label"][r].sum())
  test = rows["test"]
  hist_test = history(s, test, p.max_len)
  full = s["hist_full"]
  out["summary"] = {
    "layout": layout,
    "ratings": int(len(full)),
    "rows": out["rows"],
    "dropped_train_rows": int(s["train"].sum() - len(rows["train"])),
    "users": len(s["vocabs"]["user_id"]),
    "items": len(s["vocabs"]["item_id"]),
    "genres": len(s["vocabs"]["item_cate"]),
    "label_rate": {k: out["positives"][k] / max(1, out["rows"][k]) for k in shards.SPLITS},
    "history_length_percentiles": {str(q): float(np.percentile(full, q)) for q in (50, 90, 99)},
    "share_histories_longer_than_max_len": float(np.mean(full > p.max_len)),
    # A user rates a movie once, so the candidate itself is (almost) never in its history; "unrelated"
    # here means: no behaviour of the candidate's genre among the kept (most recent max_len) behaviours.
    "share_candidates_unrelated_to_history": out["unrelated"] / max(1, sum(out["rows"].values())),
    "share_candidate_movies_in_history": out["seen"] / max(1, sum(out["rows"].values())),
    "oov": {
      "test_candidate_items": int((s["cols"]["item_id"][test] == 0).sum()),
      "test_candidate_genres": int((s["cols"]["item_cate"][test] == 0).sum()),
      "test_history_items": int(((hist_test["hist_item_id"] == 0) & (hist_test["_hist_raw_item"] >= 0)).sum()),
      "test_users": int((s["cols"]["user_id"][test] == 0).sum()),
    },
  }
  return out


def build(folder: str, p: Params, cache_root: str) -> tuple[Path, dict[str, Any]]:
  """Converts (or reuses) the MovieLens files in `folder`; returns the data set directory and meta."""
  layout, files = find_layout(folder)
  stamp = {k: [str(v.resolve()), v.stat().st_size, v.stat().st_mtime_ns] for k, v in files.items()}
  params = {"converter": VERSION, "layout": layout, "files": stamp, **dataclasses.asdict(p)}
  directory = shards.dataset_dir(cache_root, f"movielens-{layout}", params)
  key = tuple(sorted((k, str(v.resolve())) for k, v in files.items()))
  meta = shards.load_meta(directory)
  if meta is not None and meta.get("params") == params:
    return directory, meta
  try:
    s = _converted(layout, key, p)
    schema = make_schema(s["vocabs"], p.max_len)
    (directory / "vocab").mkdir(parents=True, exist_ok=True)
    for name, vocab in s["vocabs"].items():  # value k of the list has id k + 1, as tabular writes them
      shards.write_text(directory / "vocab" / f"{name}.json", json.dumps(sorted(vocab, key=vocab.get)))
    meta = shards.build(
      directory,
      schema,
      params,
      1,
      functools.partial(_write_shard, layout, key, p, directory),
      lambda stats: stats[0]["summary"],
      desc=f"converting MovieLens {layout} ({folder})",
    )
  finally:
    _converted.cache_clear()  # the files may change before the next call: never reuse parsed data
  return directory, meta


def encode_records(trained: Path, folder: str, cache_root: str) -> tuple[Path, dict[str, Any]]:
  """Every rating of the GroupLens files in `folder` as one record of a test split, in the ratings
  file's line order, with its history (the same user's earlier ratings in those files) and the
  vocabularies of the data set `trained` (values it never saw are OOV id 0). For --predict."""
  meta = shards.load_meta(Path(trained))
  if meta is None or not str(meta.get("params", {}).get("converter", "")).startswith("movielens"):
    raise DataError(f"{trained}: not a converted MovieLens data set")
  fields = {f.name for f in dataclasses.fields(Params)}
  p = Params(**{k: v for k, v in meta["params"].items() if k in fields})
  layout, files = find_layout(folder)
  stamp = {k: [str(v.resolve()), v.stat().st_size, v.stat().st_mtime_ns] for k, v in files.items()}
  params = {"converter": VERSION, "encoded_with": Path(trained).name, "layout": layout, "files": stamp}
  directory = shards.dataset_dir(cache_root, f"movielens-{layout}-records", params)
  done = shards.load_meta(directory)
  if done is not None and done.get("params") == params:
    return directory, done
  vocabs = {}
  for name in ("item_id", "item_cate", "user_id", "gender", "occupation", "zip_prefix"):
    values = json.loads((Path(trained) / "vocab" / f"{name}.json").read_text())
    vocabs[name] = {v: i + 1 for i, v in enumerate(values)}
  s = samples(read_raw(layout, files), p, vocabs)
  schema = FeatureSchema.from_dict(meta["schema"])
  rows = np.argsort(s["order"])  # sample of each ratings line, in line order
  directory.mkdir(parents=True, exist_ok=True)
  blocks = []
  for start in range(0, len(rows), p.block_size):
    b = rows[start : start + p.block_size]
    cols = {k: v[b] for k, v in s["cols"].items()}
    cols.update(history(s, b, p.max_len))
    blocks.append(records.encode_block(schema, cols))
  shards.write_records(shards.shard_path(directory, "test", 0, 1), blocks)
  meta = {
    "params": params,
    "schema": meta["schema"],
    "files": {"train": [], "test": [shards.shard_path(directory, "test", 0, 1).name]},
    "blocks": {"train": [], "test": [len(rows[i : i + p.block_size]) for i in range(0, len(rows), p.block_size)]},
    "stats": {"rows": {"train": 0, "test": int(len(rows))}},
  }
  meta = shards.seal(directory, meta)
  shards.write_text(directory / "meta.json", json.dumps(meta, indent=1))
  return directory, meta
