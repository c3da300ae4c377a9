"""Validation-only copies of the Yelp (BARS layout) and MovieLens files, for choosing options without test.

    python -m benchmarks.holdout_files yelp  BARS_DIR OUT_DIR    # BARS_DIR: what ../shared/data/yelp/build.py wrote
    python -m benchmarks.holdout_files movielens ML_DIR OUT_DIR  # ML_DIR: an unpacked ml-100k folder

The copy's test split is a validation split carved from the training data only, so a run on it never
sees the real test rows:
  yelp       OUT/train.csv = train.csv without each user's last training pair (the positive and its
             negative, the user's last two training rows in file order); OUT/test.csv = those pairs.
  movielens  OUT/u.data = u.data without each user's last `--test-per-user` ratings (10, the movielens
             experiment's test split); the movielens converter then holds out the next-last ratings of
             every user as its test split, i.e. the validation split. u.user / u.item are copied.
The MIAN option measurements in docs/results/mian_options/ ran on these copies.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv


def yelp(src: Path, out: Path) -> None:
  table = pacsv.read_csv(
    src / "train.csv",
    convert_options=pacsv.ConvertOptions(column_types={"item_history": pa.string(), "cate_history": pa.string()}),
  )
  users = table.column("user_id").to_numpy()
  last = np.zeros(len(users), bool)
  _, first_from_end = np.unique(users[::-1], return_index=True)
  ends = len(users) - 1 - first_from_end  # each user's last row
  last[ends] = True
  last[ends - 1] = True  # and the row before it: the pair shares the user (checked below)
  if not np.all(users[ends - 1] == users[ends]):
    raise SystemExit("error: a user's last training rows are not a pair; is this the BARS layout of build.py?")
  out.mkdir(parents=True, exist_ok=True)
  pacsv.write_csv(table.filter(pa.array(~last)), out / "train.csv")
  pacsv.write_csv(table.filter(pa.array(last)), out / "test.csv")
  print(f"{out}: train {int((~last).sum())} rows, validation (as test.csv) {int(last.sum())} rows")


def movielens(src: Path, out: Path, test_per_user: int) -> None:
  data = np.loadtxt(src / "u.data", dtype=np.int64, ndmin=2)  # user, item, rating, time
  order = np.lexsort((data[:, 1], data[:, 3], data[:, 0]))  # the converter's (user, time, movie) order
  data = data[order]
  users = data[:, 0]
  start = np.searchsorted(users, users, side="left")
  end = np.searchsorted(users, users, side="right")
  from_end = end - 1 - np.arange(len(users))
  drop = from_end < np.minimum(test_per_user, end - start - 1)
  out.mkdir(parents=True, exist_ok=True)
  np.savetxt(out / "u.data", data[~drop], fmt="%d", delimiter="\t")
  for name in ("u.user", "u.item"):
    shutil.copyfile(src / name, out / name)
  print(f"{out}: {int((~drop).sum())} ratings kept, {int(drop.sum())} (each user's last) left out")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("kind", choices=["yelp", "movielens"])
  parser.add_argument("src", type=Path)
  parser.add_argument("out", type=Path)
  parser.add_argument("--test-per-user", type=int, default=10)
  a = parser.parse_args()
  if a.out.exists() and any(a.out.iterdir()):
    raise SystemExit(f"error: {a.out} is not empty; name a new folder")
  yelp(a.src, a.out) if a.kind == "yelp" else movielens(a.src, a.out, a.test_per_user)


if __name__ == "__main__":
  main()
