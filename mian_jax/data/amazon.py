"""Amazon review data (Books, Electronics, ...) in the layouts CTR papers publish, found by file name.

`data.dir` holds one of:
  DIEN layout  `local_train_splitByUser`, `local_test_splitByUser` (the DIEN reference pipeline's
               output): `label \\t uid \\t mid \\t cat \\t mid_hist \\t cat_hist`, histories joined by
               '\\x02', oldest first. `uid_voc.pkl`, `mid_voc.pkl`, `cat_voc.pkl` are used when present
               (index v becomes id v + 1), otherwise the vocabularies are built from the training file.
  BARS layout  `train.csv`, `test.csv` (AmazonBooks_x1 / AmazonElectronics_x1 of the BARS benchmark):
               header `label,user_id,item_id,cate_id,item_history,cate_history` (more columns are
               allowed and ignored), histories joined by '^'. A `valid.csv` is not read: the validation
               split is carved from train.csv (data.validation=holdout) or is the test split (=test).
  raw 2014     `reviews_<Category>_5.json` + `meta_<Category>.json` (the 2014 dumps of
               https://jmcauley.ucsd.edu/data/amazon/, one JSON object or Python-literal dict per line):
               `prepare` builds the DIEN layout first, as the DIEN reference does: an item's category
               is the last level of its first category path; every review is a positive, paired with
               one negative whose item is drawn from all reviews (so by popularity, never the positive
               itself), sharing its history; the history is the user's earlier reviewed items (the
               most recent `data.max_len`); a user's first review (no history) is not a sample; each
               user's last review (positive + negative) is the test split. (The reference's own
               split_by_user step instead sends a random tenth of the users' last reviews to test and
               trains on the other last reviews; the split here uses every earlier review for training.)
Validation (data.validation=holdout): each user's last training sample (the rows with the user's longest
history: the positive and its negative) is the validation split, when the user has other training rows.
Features: candidate item id + category; behaviours the history's items + categories; user = the user
id (embedded for these data sets, as DIEN does); no context fields (MIAN's ICIM has nothing to attend to
and is left out). Id 0 is padding and OOV (a value not in the vocabulary). gAUC groups by the raw user
id (tabular's stored `user_group`), so test users absent from the user vocabulary stay apart.
"""

from __future__ import annotations

import ast
import hashlib
import json
import pickle
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from mian_jax import progress
from mian_jax.data import delimited, shards, tabular
from mian_jax.errors import DataError

DIEN_FILES = ("local_train_splitByUser", "local_test_splitByUser")
DIEN_NAMES = ("label", "uid", "mid", "cat", "mid_hist", "cat_hist")
DIEN_PICKLES = {"user": "uid_voc.pkl", "item": "mid_voc.pkl", "cate": "cat_voc.pkl"}
BARS_FILES = ("train.csv", "test.csv")
BARS_NAMES = ("label", "user_id", "item_id", "cate_id", "item_history", "cate_history")
DOWNLOAD = "https://jmcauley.ucsd.edu/data/amazon/"
PREPARE_VERSION = "amazon-prepare/1"


Params = tabular.Options


def _columns(names: tuple[str, ...], separator: str) -> tuple[tabular.Column, ...]:
  label, user, item, cate, item_hist, cate_hist = names
  c = tabular.Column
  return (
    c(label, "label", "label", "label"),
    c(item, "item_id", "item", "categorical", "item"),
    c(cate, "item_cate", "item", "categorical", "cate"),
    c(item_hist, "hist_item_id", "behaviour", "sequence", "item", separator),
    c(cate_hist, "hist_item_cate", "behaviour", "sequence", "cate", separator),
    c(user, "user_id", "user", "categorical", "user"),
  )


def find_layout(folder: str | Path) -> tuple[str, dict[str, Path]]:
  """('dien' | 'bars' | 'raw', {role: path}); DataError naming what was looked for when none is there."""
  d = Path(folder)
  if not d.is_dir():
    raise DataError(f"data.dir={folder} is not a folder; set data.dir to the folder holding the Amazon files")
  if (d / DIEN_FILES[0]).is_file():
    if not (d / DIEN_FILES[1]).is_file():
      raise DataError(f"{d}: {DIEN_FILES[0]} found but {DIEN_FILES[1]} is missing (the DIEN layout needs both)")
    files = {"train": d / DIEN_FILES[0], "test": d / DIEN_FILES[1]}
    files.update({f"vocab:{v}": d / name for v, name in DIEN_PICKLES.items() if (d / name).is_file()})
    return "dien", files
  if (d / BARS_FILES[0]).is_file():
    if not (d / BARS_FILES[1]).is_file():
      raise DataError(f"{d}: {BARS_FILES[0]} found but {BARS_FILES[1]} is missing (the BARS layout needs both)")
    return "bars", {"train": d / BARS_FILES[0], "test": d / BARS_FILES[1]}
  reviews = sorted(d.glob("reviews_*_5.json"))
  for r in reviews:
    category = r.name[len("reviews_") : -len("_5.json")]
    meta = d / f"meta_{category}.json"
    if meta.is_file():
      return "raw", {"reviews": r, "meta": meta}
  if reviews:
    raise DataError(
      f"{reviews[0]} found but not meta_{reviews[0].name[8:-7]}.json beside it; download both from {DOWNLOAD}"
    )
  raise DataError(
    f"{d}: no Amazon files found; expected the DIEN layout ({', '.join(DIEN_FILES)}), the BARS "
    f"layout ({', '.join(BARS_FILES)}) or the raw 2014 dumps (reviews_<Category>_5.json and "
    f"meta_<Category>.json from {DOWNLOAD})"
  )


# ----------------------------------------------------------------------------------- vocab pickles


class _PlainUnpickler(pickle.Unpickler):
  """Loads only plain containers, strings and numbers: a vocabulary pickle can run no code."""

  def find_class(self, module, name):
    raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a vocabulary holds only strings and ints")


def load_vocab_pickle(path: Path) -> list[str]:
  """DIEN's {value: index} dict -> values in index order (holes get values no input can hold)."""
  try:
    with open(path, "rb") as f:
      voc = _PlainUnpickler(f, encoding="latin1").load()
  except Exception as e:  # a corrupt or foreign pickle: say which file
    raise DataError(
      f"{path}: not a vocabulary pickle ({e}); delete it to build the vocabulary from the training file"
    ) from None
  if not isinstance(voc, dict) or not all(isinstance(v, int) and v >= 0 for v in voc.values()):
    raise DataError(
      f"{path}: expected a dict of value -> non-negative int index; delete it to build the "
      f"vocabulary from the training file"
    )
  values = [f"\x00unused:{i}" for i in range(max(voc.values(), default=-1) + 1)]
  for key, index in voc.items():
    values[index] = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
  return values


def _given_vocabs(files: dict[str, Path], cache_root: str) -> tuple[tuple[str, str], ...]:
  out = []
  for role, path in files.items():
    if not role.startswith("vocab:"):
      continue
    digest = hashlib.sha256(json.dumps(tabular.stamp([path])).encode()).hexdigest()[:10]
    target = Path(cache_root) / "vocab-pickles" / f"{path.stem}-{digest}.json"
    if not target.exists():
      target.parent.mkdir(parents=True, exist_ok=True)
      shards.write_text(target, json.dumps(load_vocab_pickle(path)))
    out.append((role[len("vocab:") :], str(target)))
  return tuple(sorted(out))


# ------------------------------------------------------------------------------- raw 2014 dumps


def _records(path: Path, bad: delimited.BadRows) -> Iterator[tuple[int, dict]]:
  """(line, dict) for each line: JSON, or a Python literal (the meta dumps are written that way)."""
  with open(path, "rb") as f:
    for number, raw in enumerate(f, 1):
      try:
        text = raw.decode("utf-8").strip()
      except UnicodeDecodeError as e:
        bad.add(str(path), number, f"byte {e.start + 1} is not valid UTF-8")
        continue
      if not text:
        continue
      try:
        obj = json.loads(text)
      except ValueError:
        try:
          obj = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
          bad.add(str(path), number, "is neither a JSON object nor a Python dict literal")
          continue
      if not isinstance(obj, dict):
        bad.add(str(path), number, f"is a {type(obj).__name__}, not an object")
        continue
      yield number, obj


def _category(obj: dict) -> str | None:
  cats = obj.get("categories")
  if isinstance(cats, list) and cats and isinstance(cats[0], list) and cats[0]:
    return str(cats[0][-1]).strip() or None
  return None


def prepare(files: dict[str, Path], p: Params, cache_root: str) -> Path:
  """Builds the DIEN layout from the raw reviews + meta dumps (cached); returns its folder."""
  params = {
    "version": PREPARE_VERSION,
    "inputs": tabular.stamp([files["reviews"], files["meta"]]),
    "max_len": p.max_len,
    "seed": p.seed,
    "max_bad_rows": p.max_bad_rows,
  }
  out = shards.dataset_dir(cache_root, f"amazon-prepared-{files['reviews'].name[8:-7]}", params)
  if (out / "params.json").exists() and json.loads((out / "params.json").read_text()) == params:
    return out
  bad = delimited.BadRows(p.max_bad_rows)
  users: dict[str, int] = {}
  items: dict[str, int] = {}
  cols: list[list[int]] = [[], [], []]
  for number, obj in progress.counted(_records(files["reviews"], bad), "line", "reading reviews", every=1_000_000):
    try:
      user, item, time = str(obj["reviewerID"]), str(obj["asin"]), int(obj["unixReviewTime"])
    except (KeyError, TypeError, ValueError) as e:
      bad.add(str(files["reviews"]), number, f"needs reviewerID, asin and an integer unixReviewTime ({e!r})")
      continue
    cols[0].append(users.setdefault(user, len(users)))
    cols[1].append(items.setdefault(item, len(items)))
    cols[2].append(time)
  if not cols[0]:
    raise DataError(f"{files['reviews']}: no reviews")
  names = list(items)
  category = ["(none)"] * len(names)
  for _, obj in progress.counted(_records(files["meta"], bad), "line", "reading item meta", every=1_000_000):
    index = items.get(str(obj.get("asin")))
    if index is not None:
      category[index] = _category(obj) or "(none)"
  u, i, t = (np.asarray(c, np.int64) for c in cols)
  order = np.lexsort((i, t, u))
  u, i, t = u[order], i[order], t[order]
  rng = np.random.default_rng([p.seed, 1729])
  neg = i[rng.integers(0, len(i), len(i))]
  for _ in range(1000):  # redraw the negatives that hit their positive
    same = neg == i
    if not same.any() or len(items) < 2:
      break
    neg[same] = i[rng.integers(0, len(i), int(same.sum()))]
  user_names = list(users)
  out.mkdir(parents=True, exist_ok=True)
  handles = {s: open(out / (name + ".tmp"), "w", encoding="utf-8") for s, name in zip(("train", "test"), DIEN_FILES)}
  starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
  ends = np.r_[starts[1:], len(u)]
  try:
    for a, b in progress.counted(
      zip(starts, ends), "user", "writing the DIEN layout", total=len(starts), every=max(1, len(starts) // 10)
    ):
      uid = user_names[u[a]]
      for k in range(a + 1, b):
        h = slice(max(a, k - p.max_len), k)
        hist = "\t" + "\x02".join(names[x] for x in i[h]) + "\t" + "\x02".join(category[x] for x in i[h])
        f = handles["test" if k == b - 1 else "train"]
        f.write(f"0\t{uid}\t{names[neg[k]]}\t{category[neg[k]]}{hist}\n")
        f.write(f"1\t{uid}\t{names[i[k]]}\t{category[i[k]]}{hist}\n")
  finally:
    for f in handles.values():
      f.close()
  for name in DIEN_FILES:
    (out / (name + ".tmp")).replace(out / name)
  stats = {
    "reviews": int(len(u)),
    "users": len(users),
    "items": len(items),
    "bad_rows": bad.count,
    "bad_row_examples": bad.examples,
    "items_without_category": int(sum(c == "(none)" for c in category)),
  }
  shards.write_text(out / "prepare_stats.json", json.dumps(stats, indent=1))
  shards.write_text(out / "params.json", json.dumps(params))
  return out


# ------------------------------------------------------------------------------------------ build


def spec_for(layout: str, files: dict[str, Path], p: Params, cache_root: str) -> tabular.Spec:
  if layout == "bars":
    header = delimited.read_header(files["train"], ",")
    missing = [n for n in BARS_NAMES if n not in header]
    if missing:
      raise DataError(
        f"{files['train'].name} line 1: column {missing[0]!r} is missing; the BARS layout needs {','.join(BARS_NAMES)}"
      )
    fmt = delimited.TextFormat(",", header, header=True, quoting=True)
    columns, given = _columns(BARS_NAMES, "^"), ()
  else:
    fmt = delimited.TextFormat("\t", DIEN_NAMES, header=False, quoting=False)
    columns, given = _columns(DIEN_NAMES, "\x02"), _given_vocabs(files, cache_root)
  return tabular.Spec(
    f"amazon-{layout}",
    columns,
    "user_id",
    p.max_len,
    p.block_size,
    p.seed,
    p.max_bad_rows,
    fmt,
    given,
    holdout="last" if p.holdout else "",
  )


def build(folder: str, p: Params, cache_root: str) -> tuple[Path, dict[str, Any]]:
  """Converts (or reuses) the Amazon files in `folder` into the cache folder `cache_root`; returns the data set
  directory and meta."""
  layout, files = find_layout(folder)
  if layout == "raw":
    prepared = prepare(files, p, cache_root)
    layout, files = "dien", {"train": prepared / DIEN_FILES[0], "test": prepared / DIEN_FILES[1]}
  if layout == "bars" and delimited.read_header(files["test"], ",") != delimited.read_header(files["train"], ","):
    raise DataError(
      f"{files['test']} line 1: its header differs from {files['train'].name}'s; both need the same columns"
    )
  spec = spec_for(layout, files, p, cache_root)
  inputs = {"train": [str(files["train"])], "test": [str(files["test"])]}
  return tabular.build(
    spec,
    inputs,
    cache_root,
    p.part_bytes,
    p.embed_user_id,
    {"layout": layout},
    desc=f"converting Amazon ({layout} layout, {folder})",
  )
