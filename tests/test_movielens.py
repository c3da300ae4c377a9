"""MovieLens: the ml-100k / ml-1m converter (order, history, split, labels, OOV, context, cache, errors),
the real ml-100k folder when present, and a tiny training run through launch.py."""

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import launch, decode_split
from mian_jax.config import DataConfig
from mian_jax.data import movielens, pipeline

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "movielens-100k"
MONDAY_13H = 1609765200  # 2021-01-04 13:00:00 UTC, a Monday
DAY = 86400

# (user, movie, rating, time): 4 users, 30 ratings; movie 12 is rated only by user 1, last (test only).
RATINGS = [
  (1, m, r, MONDAY_13H + k * DAY)
  for k, (m, r) in enumerate([(1, 5), (2, 3), (3, 4), (4, 1), (5, 4), (6, 2), (7, 5), (12, 4)])
]
RATINGS += [
  (2, m, r, MONDAY_13H + 500 + k * 7 * 3600)
  for k, (m, r) in enumerate([(3, 2), (1, 4), (5, 5), (8, 3), (9, 4), (2, 1), (10, 5)])
]
RATINGS += [
  (3, m, r, MONDAY_13H - 3 * DAY + k * 1000)
  for k, (m, r) in enumerate([(4, 4), (6, 4), (7, 3), (8, 2), (9, 5), (10, 1), (11, 4), (1, 3)])
]
RATINGS += [
  (4, m, r, MONDAY_13H + 40 * DAY + k * 60)
  for k, (m, r) in enumerate([(11, 5), (2, 2), (3, 3), (5, 4), (6, 5), (7, 1), (9, 4)])
]
USERS = ["1|24|M|technician|85711", "2|53|F|other|94043", "3|17|M|writer|32067", "4|60|F|artist|T8H1N"]


def _movie_line(movie: int) -> str:
  flags = ["0"] * 19
  flags[1 + movie % 11] = "1"  # first genre: GENRES_100K[1 + movie % 11] (movie 12 shares movie 1's)
  if movie % 3 == 0:
    flags[18] = "1"  # a second genre, later in the list: not the first
  return f"{movie}|Movie {movie} (1995)|01-Jan-1995||http://example.org/{movie}|" + "|".join(flags)


def write_100k(folder: Path, ratings=RATINGS, users=USERS, movies=range(1, 13)) -> Path:
  folder.mkdir(parents=True, exist_ok=True)
  shuffled = [ratings[i] for i in np.random.default_rng(0).permutation(len(ratings))]  # file order is not time order
  (folder / "u.data").write_text("".join(f"{u}\t{m}\t{r}\t{t}\n" for u, m, r, t in shuffled))
  (folder / "u.user").write_text("".join(line + "\n" for line in users))
  (folder / "u.item").write_bytes("".join(_movie_line(m) + "\n" for m in movies).encode("latin-1"))
  return folder


def _params(**kw):
  return movielens.Params(**{**dict(max_len=3, block_size=1, min_positive_rating=4, test_per_user=1, seed=0), **kw})


def test_converter_order_history_split_labels_oov_context_and_cache(tmp_path):
  folder = write_100k(tmp_path / "ml")
  raw = movielens.read_raw(*movielens.find_layout(folder))
  s = movielens.samples(raw, _params())
  n = len(RATINGS)
  assert len(s["user"]) == n
  # Time order within each user; each user's last rating (only) is its test sample.
  for u in range(1, 5):
    idx = np.flatnonzero(s["user"] == u)
    assert np.all(np.diff(s["time"][idx]) >= 0)
    assert s["test"][idx].tolist() == [False] * (len(idx) - 1) + [True]
  # Histories: exactly the user's strictly earlier movies, the most recent max_len (3), oldest first.
  hist = movielens.history(s, np.arange(n), 3)
  for row in range(n):
    mine = sorted((t, m) for u, m, _, t in RATINGS if u == s["user"][row] and t < s["time"][row])
    expected = [m for _, m in mine][-3:]
    got = hist["_hist_raw_item"][row]
    assert got[: len(expected)].tolist() == expected and np.all(got[len(expected) :] == -1)
    assert hist["hist_len"][row] == len(expected) and s["hist_full"][row] == len(mine)
  # Labels: rating >= 4.
  assert s["cols"]["label"].tolist() == (s["rating"] >= 4).astype(int).tolist()
  s3 = movielens.samples(raw, _params(min_positive_rating=3))
  assert s3["cols"]["label"].sum() > s["cols"]["label"].sum()
  # Movie 12 appears only in user 1's test sample: OOV (0); its genre is known from training.
  r12 = np.flatnonzero(s["raw_item"] == 12)
  assert (
    len(r12) == 1 and s["test"][r12[0]] and s["cols"]["item_id"][r12[0]] == 0 and s["cols"]["item_cate"][r12[0]] > 0
  )
  assert np.all(s["cols"]["item_id"][s["raw_item"] != 12] > 0)
  # Context from the known timestamp: 13:00 on a Monday (stored + 1).
  first = np.flatnonzero((s["user"] == 1) & (s["time"] == MONDAY_13H))[0]
  assert s["cols"]["hour"][first] == 14 and s["cols"]["weekday"][first] == 1
  assert (
    s["cols"]["weekday"][np.flatnonzero((s["user"] == 1) & (s["time"] == MONDAY_13H + 5 * DAY))[0]] == 6
  )  # Saturday
  # Profile: age 17 -> <18 (bucket 0, stored 1); 60 -> 56+ (bucket 6, stored 7).
  assert s["cols"]["age_bucket"][s["user"] == 3][0] == 1 and s["cols"]["age_bucket"][s["user"] == 4][0] == 7

  # Shards: every rating once (block_size 1 drops nothing), test = one per user, stats in meta.
  cache = tmp_path / "cache"
  d1, meta = movielens.build(str(folder), _params(), str(cache))
  train, test = decode_split(d1, meta, "train"), decode_split(d1, meta, "test")
  assert len(train["label"]) + len(test["label"]) == n and len(test["label"]) == 4
  counts = np.bincount(np.concatenate([train["user_id"], test["user_id"]]))
  assert sorted(counts[1:].tolist()) == sorted(sum(1 for r in RATINGS if r[0] == u) for u in range(1, 5))
  st = meta["stats"]
  assert st["users"] == 4 and st["items"] == 11 and st["oov"]["test_candidate_items"] == 1
  assert st["rows"] == {"train": n - 4, "valid": 0, "test": 4} and set(st["history_length_percentiles"]) == {
    "50",
    "90",
    "99",
  }
  assert 0 <= st["share_candidates_unrelated_to_history"] <= 1
  assert json.loads((d1 / "vocab" / "item_id.json").read_text()) == list(range(1, 12))  # movie k has id k
  assert json.loads((d1 / "stats.json").read_text()) == st
  # Cached: a second call reuses the data set; a changed input file rebuilds it.
  stamp = (d1 / "meta.json").stat().st_mtime_ns
  d2, _ = movielens.build(str(folder), _params(), str(cache))
  assert d2 == d1 and (d1 / "meta.json").stat().st_mtime_ns == stamp
  with open(folder / "u.data", "a") as f:
    f.write(f"4\t12\t5\t{MONDAY_13H + 50 * DAY}\n")
  d3, meta3 = movielens.build(str(folder), _params(), str(cache))
  assert d3 != d1 and meta3["stats"]["ratings"] == n + 1 and meta3["stats"]["items"] == 11


def test_malformed_line_and_missing_files_name_the_file(tmp_path):
  folder = write_100k(tmp_path / "ml")
  lines = (folder / "u.data").read_text().splitlines()
  lines[16] = "\t".join(lines[16].split("\t")[:3])
  (folder / "u.data").write_text("\n".join(lines) + "\n")
  with pytest.raises(pipeline.DataError, match=r"^u\.data line 17: expected 4 tab-separated fields, got 3$"):
    movielens.build(str(folder), _params(), str(tmp_path / "cache"))
  lines[16] = "1\t2\tfive\t3"
  (folder / "u.data").write_text("\n".join(lines) + "\n")
  with pytest.raises(pipeline.DataError, match=r"u\.data line 17: rating 'five' is not an integer"):
    movielens.build(str(folder), _params(), str(tmp_path / "cache"))
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(pipeline.DataError, match="empty.*u.data, u.user, u.item.*ratings.dat, users.dat, movies.dat"):
    movielens.find_layout(empty)
  (folder / "u.item").unlink()
  with pytest.raises(pipeline.DataError, match="u.item is missing"):
    movielens.find_layout(folder)


def test_ml_1m_layout(tmp_path):
  folder = tmp_path / "ml-1m"
  folder.mkdir()
  ratings = [
    (1, 10, 5, 978300760),
    (1, 20, 3, 978300761),
    (1, 30, 4, 978300900),
    (2, 20, 4, 978000000),
    (2, 10, 2, 978000100),
    (2, 40, 5, 978000200),
  ]
  (folder / "ratings.dat").write_text("".join(f"{u}::{m}::{r}::{t}\n" for u, m, r, t in ratings))
  (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
  (folder / "movies.dat").write_bytes(
    "10::Toy Story (1995)::Animation|Children's|Comedy\n20::Jumanji (1995)::Adventure\n"
    "30::Café (1995)::Comedy|Drama\n40::Heat (1995)::Action|Crime\n".encode("latin-1")
  )
  assert movielens.find_layout(folder)[0] == "1m"
  d, meta = movielens.build(str(folder), _params(), str(tmp_path / "cache"))
  assert d.name.startswith("movielens-1m-") and meta["stats"]["rows"] == {"train": 4, "valid": 0, "test": 2}
  raw = movielens.read_raw(*movielens.find_layout(folder))
  assert raw["movies"] == {10: "Animation", 20: "Adventure", 30: "Comedy", 40: "Action"}
  assert raw["users"][1][0] == 0 and raw["users"][2][0] == 6  # age codes 1 -> <18, 56 -> 56+
  s = movielens.samples(raw, _params())
  assert s["raw_item"][s["test"]].tolist() == [30, 40]  # the last rating of each user
  assert s["cols"]["item_id"][s["test"]].tolist() == [0, 0]  # neither movie is rated in training
  test = decode_split(d, meta, "test")
  assert sorted(test["label"].tolist()) == [1.0, 1.0] and test["hist_len"].tolist() == [2, 2]


def test_real_movielens_100k(tmp_path, monkeypatch):
  if not (REAL / "u.data").exists():
    pytest.skip(f"{REAL} is absent (GroupLens ml-100k, not part of the repository)")
  monkeypatch.setenv("MIAN_JAX_CACHE", str(tmp_path))
  from mian_jax import data

  src = data.open_source(DataConfig(source="movielens", dir=str(REAL), max_len=50, block_size=64))
  st = src.meta["stats"]
  # data.validation=holdout (the default): each user's rating before its test rating is validation
  assert st["ratings"] == 100_000 and st["users"] == 943 and st["rows"]["test"] == st["rows"]["valid"] == 943
  assert st["rows"]["train"] + st["rows"]["valid"] + st["rows"]["test"] + st["dropped_train_rows"] == 100_000
  assert src.rows("train") % 64 == 0 and src.rows("test") == 943
  positives = sum(int(line.split("\t")[2]) >= 4 for line in (REAL / "u.data").read_text().splitlines())
  assert positives == 55_375  # ml-100k: 21,201 fours + 34,174 fives
  assert abs(st["label_rate"]["train"] - 0.554) < 0.01 and 0.4 < st["label_rate"]["test"] < 0.6
  assert st["history_length_percentiles"]["50"] > 20 and st["oov"]["test_users"] == 0
  assert not src.schema["user_id"].embed and src.schema.user_key == "user_id"


def test_tiny_training_run(tmp_path):
  rng = np.random.default_rng(1)
  ratings = [
    (u, int(m), int(rng.integers(1, 6)), 880000000 + u * 1000 + k * 3600 + int(rng.integers(0, 60)))
    for u in range(1, 41)
    for k, m in enumerate(rng.choice(np.arange(1, 61), 30, replace=False))
  ]
  users = [f"{u}|{20 + u}|{'MF'[u % 2]}|job{u % 5}|{u % 10}0000" for u in range(1, 41)]
  folder = write_100k(tmp_path / "ml", ratings, users, range(1, 61))
  run = launch(tmp_path, "movielens:tiny", f"data.dir={folder}", "train.steps=10")
  assert run.returncode == 0, run.stderr
  last = run.stdout.strip().splitlines()[-1]
  assert last.startswith("final test auc=") and "gauc=" in last and "bayes" not in last
  # --predict on the GroupLens folder itself: one probability per line of u.data, in line order.
  scored = launch(
    tmp_path,
    "movielens:tiny",
    f"data.dir={folder}",
    "train.steps=10",
    extra=("--predict", str(folder), "--out", str(tmp_path / "p.csv")),
  )
  assert scored.returncode == 0, scored.stderr
  rows = (tmp_path / "p.csv").read_text().splitlines()
  assert rows[0] == "row,user,probability" and len(rows) - 1 == len(ratings)
  lines = (folder / "u.data").read_text().splitlines()
  assert [r.split(",")[1] for r in rows[1:]] == [l.split("\t")[0] for l in lines]  # the raw user id
  probs = np.array([float(r.split(",")[2]) for r in rows[1:]])
  assert np.all((probs > 0) & (probs < 1)) and probs.std() > 0
  # The same files with new mtimes (copied, or a share mounted anew) are converted again into a new cache
  # folder with the same content: the run resumes from its checkpoint.
  for name in ("u.data", "u.user", "u.item"):
    os.utime(folder / name, ns=(time.time_ns(), time.time_ns() + 10**9))
  resumed = launch(tmp_path, "movielens:tiny", f"data.dir={folder}", "train.steps=14")
  assert resumed.returncode == 0, resumed.stderr
  assert "resumed from step 10" in resumed.stdout, resumed.stdout
  assert len(list((tmp_path / "cache").glob("movielens-100k-" + "?" * 10))) == 2
  # Other ratings in those files: another data set, refused.
  (folder / "u.data").write_text("".join(l.replace("\t5\t", "\t1\t") + "\n" for l in lines))
  other = launch(tmp_path, "movielens:tiny", f"data.dir={folder}", "train.steps=18")
  assert other.returncode == 2
  assert "holds checkpoints of another run (data: checkpoint movielens-100k-" in other.stderr.strip().splitlines()[-1]


def test_ratings_to_score_are_encoded_in_file_order_with_the_training_vocabularies(tmp_path):
  """--predict on a GroupLens folder: every rating in the ratings file's line order, with its history
  and the trained vocabularies; the conversion's own test rows come out identical."""
  folder = write_100k(tmp_path / "ml")
  directory, meta = movielens.build(str(folder), _params(), str(tmp_path / "cache"))
  enc_dir, enc_meta = movielens.encode_records(directory, str(folder), str(tmp_path / "cache"))
  encoded = decode_split(enc_dir, enc_meta, "test")
  lines = [tuple(map(int, l.split("\t"))) for l in (folder / "u.data").read_text().splitlines()]
  assert len(encoded["label"]) == len(lines)
  assert encoded["label"].tolist() == [float(r >= 4) for _, _, r, _ in lines]  # line order
  vocab = json.loads((directory / "vocab" / "item_id.json").read_text())
  assert encoded["item_id"].tolist() == [vocab.index(m) + 1 if m in vocab else 0 for _, m, _, _ in lines]
  # The conversion's test rows (each user's last rating), found among the encoded lines, match exactly.
  converted = decode_split(directory, meta, "test")
  last = {u: max((t, i) for i, (uu, _, _, t) in enumerate(lines) if uu == u)[1] for u in {l[0] for l in lines}}
  pick = np.array([last[u] for u in sorted(last)])  # the converted test split is in user order
  for k in converted:
    np.testing.assert_array_equal(encoded[k][pick], converted[k], err_msg=k)
