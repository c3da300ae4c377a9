"""Amazon layouts: DIEN (vocabulary built or from pickles, OOV, truncation), BARS, the raw 2014 dumps
(prepare), malformed input (file + line, max_bad_rows), caching, parallel parts; each trains."""

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

import experiments
from helpers import launch, decode_split, train_briefly
from mian_jax.data import amazon, pipeline
from mian_jax.schema import FeatureSchema

ITEMS = [f"B{i:03d}" for i in range(40)]
CATE = {item: f"cat{i % 5}" for i, item in enumerate(ITEMS)}


def samples(users: int = 60, seed: int = 0) -> list[tuple]:
  """(label, user, item, history) with a planted signal: each user likes one category, which most of
  the history and every positive have; negatives come from the other categories."""
  rng = np.random.default_rng(seed)
  out = []
  for u in range(users):
    liked = [x for x in ITEMS if CATE[x] == f"cat{u % 5}"]
    other = [x for x in ITEMS if CATE[x] != f"cat{u % 5}"]
    hist = [(liked if rng.random() < 0.8 else other)[rng.integers(0, 8)] for _ in range(rng.integers(1, 9))]
    for _ in range(4):
      out.append((0, f"U{u}", other[rng.integers(0, len(other))], list(hist)))
      out.append((1, f"U{u}", liked[rng.integers(0, len(liked))], list(hist)))
  return out


def growing_samples(users: int = 30) -> list[tuple]:
  """(label, user, item, history) as DIN's build_dataset makes them: per user, samples whose history grows
  by one behaviour each time, a positive and a negative each (the last pair is the validation holdout);
  plus a user with a single pair (which stays in train)."""
  rows = []
  for u in range(users):
    seq = [ITEMS[(u * 7 + k) % 40] for k in range(3 + u % 4)]
    for t in range(1, len(seq)):
      rows += [(1, f"U{u}", seq[t], seq[:t]), (0, f"U{u}", ITEMS[(u + t) % 40], seq[:t])]
  return rows + [(1, "solo", ITEMS[1], [ITEMS[2]]), (0, "solo", ITEMS[3], [ITEMS[2]])]


def dien_line(label, user, item, hist, cate=None) -> str:
  cats = [CATE.get(x, "catX") for x in hist]
  return (
    f"{label}\t{user}\t{item}\t{cate or CATE.get(item, 'catX')}\t" + "\x02".join(hist) + "\t" + "\x02".join(cats) + "\n"
  )


def write_dien(folder: Path, rows: list[tuple], test_rows: list[tuple]) -> Path:
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "local_train_splitByUser").write_text("".join(dien_line(*r) for r in rows))
  (folder / "local_test_splitByUser").write_text("".join(dien_line(*r) for r in test_rows))
  return folder


def write_bars(folder: Path, rows: list[tuple], test_rows: list[tuple]) -> Path:
  folder.mkdir(parents=True, exist_ok=True)
  for name, rs in (("train.csv", rows), ("test.csv", test_rows)):
    lines = ["label,user_id,item_id,cate_id,item_history,cate_history,extra"]
    lines += [f"{lab},{u},{i},{CATE[i]},{'^'.join(h)},{'^'.join(CATE[x] for x in h)},\"x,y\"" for lab, u, i, h in rs]
    (folder / name).write_text("\n".join(lines) + "\n")
  return folder


def params(**kw) -> amazon.Params:
  return amazon.Params(
    **{**dict(max_len=5, block_size=4, seed=0, max_bad_rows=0, part_bytes=1 << 20, embed_user_id=True), **kw}
  )


def test_dien_layout_vocabulary_oov_truncation_and_cache(tmp_path):
  rows = samples()
  test_rows = [(1, "U0", ITEMS[3], ["B001", "NEWITEM", "B002"]), (0, "NEWUSER", "NEWITEM", [])]
  folder = write_dien(tmp_path / "dien", rows, test_rows)
  d, meta = amazon.build(str(folder), params(), str(tmp_path / "cache"))
  st = meta["stats"]
  # Vocabularies from the training file (candidates and histories), by falling frequency; 0 = OOV.
  vocab = {v: json.loads((d / "vocab" / f"{v}.json").read_text()) for v in ("item", "cate", "user")}
  counts = {}
  for _, _, item, hist in rows:
    for x in [item] + hist:
      counts[x] = counts.get(x, 0) + 1
  assert vocab["item"] == sorted(counts, key=lambda x: (-counts[x], x))
  assert st["vocabularies"] == {"item": len(counts), "cate": 5, "user": 60}
  assert (
    st["rows"] == {"train": len(rows) // 4 * 4, "valid": 0, "test": 2} and st["dropped_train_rows"] == len(rows) % 4
  )
  test = decode_split(d, meta, "test")  # test rows keep file order
  ids = {x: vocab["item"].index(x) + 1 for x in vocab["item"]}
  assert test["item_id"].tolist() == [ids[ITEMS[3]], 0] and test["user_id"].tolist() == [
    1 + vocab["user"].index("U0"),
    0,
  ]
  assert test["hist_item_id"][0, :3].tolist() == [ids["B001"], 0, ids["B002"]] and test["hist_len"].tolist() == [3, 0]
  assert st["oov"]["test"] == {
    "item_id": 1,
    "item_cate": 1,
    "hist_item_id": 1,
    "hist_item_cate": 1,
    "user_id": 1,
  }  # catX unseen
  assert json.loads((d / "stats.json").read_text()) == st
  # Training rows: every row once (shuffled), histories cut to the most recent max_len.
  train = decode_split(d, meta, "train")
  assert len(train["label"]) == st["rows"]["train"] and 0.4 < train["label"].mean() < 0.6
  long = [r for r in rows if len(r[3]) > 5]
  assert long and train["hist_len"].max() == 5 and st["share_histories_longer_than_max_len"] > 0
  want = sorted(tuple(ids[x] for x in h[-5:]) for _, _, _, h in rows)[:10]
  got = sorted(tuple(r[:n]) for r, n in zip(train["hist_item_id"].tolist(), train["hist_len"]))
  assert set(want) <= set(got)
  # Cached: the same inputs reuse the shards; a changed file converts again.
  stamp = (d / "meta.json").stat().st_mtime_ns
  assert amazon.build(str(folder), params(), str(tmp_path / "cache"))[0] == d
  assert (d / "meta.json").stat().st_mtime_ns == stamp
  with open(folder / "local_test_splitByUser", "a") as f:
    f.write(dien_line(1, "U1", ITEMS[0], ["B000"]))
  d2, meta2 = amazon.build(str(folder), params(), str(tmp_path / "cache"))
  assert d2 != d and meta2["stats"]["rows"]["test"] == 3


def test_dien_vocabulary_pickles_and_a_pickle_that_would_run_code(tmp_path):
  rows = samples(20)
  folder = write_dien(tmp_path / "dien", rows, rows[:8])
  items = sorted({x for _, _, i, h in rows for x in [i] + h})
  mid_voc = {"default_mid": 0, **{x: k + 1 for k, x in enumerate(items)}}
  with open(folder / "mid_voc.pkl", "wb") as f:
    pickle.dump(mid_voc, f, protocol=2)
  d, meta = amazon.build(str(folder), params(), str(tmp_path / "cache"))
  test = decode_split(d, meta, "test")
  assert test["item_id"].tolist() == [mid_voc[r[2]] + 1 for r in rows[:8]]  # index v -> id v + 1
  assert meta["stats"]["vocabularies"]["item"] == len(items) + 1
  assert meta["stats"]["vocabularies"]["user"] == 20  # no uid pickle: built from the training file

  class Evil:
    def __reduce__(self):
      return (os.system, ("echo pwned",))

  with open(folder / "mid_voc.pkl", "wb") as f:
    pickle.dump({"a": 1, "b": Evil()}, f)
  with pytest.raises(pipeline.DataError, match=r"mid_voc.pkl: not a vocabulary pickle \(refusing to load"):
    amazon.build(str(folder), params(), str(tmp_path / "cache"))


@pytest.mark.parametrize(
  "bad_line, reason",
  [
    ("1\tU1\tB001\tcat1\tB002\n", r"expected 6 tab-separated fields, got 5"),
    ("yes\tU1\tB001\tcat1\tB002\tcat2\n", r"label='yes' is not a 0/1 label"),
    ("2\tU1\tB001\tcat1\tB002\tcat2\n", r"label='2' is not a 0/1 label"),
    ("1\tU1\tB001\tcat1\tB002\x02B003\tcat2\n", r"cat_hist has 1 entries but mid_hist has 2"),
    (b"1\tU1\tB\xff01\tcat1\tB002\tcat2\n", r"byte 7 is not valid UTF-8"),
  ],
)
def test_malformed_lines_name_file_and_line_or_are_skipped(tmp_path, bad_line, reason):
  rows = samples(10)
  good = "".join(dien_line(*r) for r in rows).encode()
  bad = bad_line if isinstance(bad_line, bytes) else bad_line.encode()
  folder = tmp_path / "dien"
  folder.mkdir()
  (folder / "local_train_splitByUser").write_bytes(
    good[: good.index(b"\n", 200) + 1] + bad + b"\n" + good[good.index(b"\n", 200) + 1 :]
  )
  line = good[: good.index(b"\n", 200) + 1].count(b"\n") + 1
  (folder / "local_test_splitByUser").write_bytes(good[: good.index(b"\n", 1000) + 1])
  cache = tmp_path / "cache"
  with pytest.raises(pipeline.DataError, match=rf"^local_train_splitByUser line {line}: {reason}.*max_bad_rows"):
    amazon.build(str(folder), params(), str(cache))
  assert not list(cache.rglob("meta.json"))  # nothing looks finished
  d, meta = amazon.build(str(folder), params(max_bad_rows=1), str(cache))
  st = meta["stats"]
  assert st["bad_rows"]["count"] == 1 and st["bad_rows"]["examples"][0].startswith(
    f"local_train_splitByUser line {line}"
  )
  assert st["rows"]["train"] + st["dropped_train_rows"] == len(rows)


def test_bad_rows_over_the_budget_and_missing_files(tmp_path):
  rows = samples(10)
  text = "".join(dien_line(*r) for r in rows) + "x\n" * 3
  folder = write_dien(tmp_path / "dien", [], rows[:8])
  (folder / "local_train_splitByUser").write_text(text)
  with pytest.raises(pipeline.DataError, match=r"line \d+: expected 6 .* \(more than data.max_bad_rows=2\)"):
    amazon.build(str(folder), params(max_bad_rows=2), str(tmp_path / "cache"))
  (folder / "local_test_splitByUser").unlink()
  with pytest.raises(pipeline.DataError, match="local_test_splitByUser is missing"):
    amazon.find_layout(folder)
  with pytest.raises(pipeline.DataError, match="no Amazon files found.*local_train_splitByUser.*train.csv.*reviews_"):
    amazon.find_layout(tmp_path)


def test_bars_layout_equals_dien_layout_and_parallel_parts_equal_one_part(tmp_path):
  rows, test_rows = samples(40), samples(10, seed=1)
  dien = amazon.build(str(write_dien(tmp_path / "dien", rows, test_rows)), params(), str(tmp_path / "c1"))
  bars = amazon.build(str(write_bars(tmp_path / "bars", rows, test_rows)), params(), str(tmp_path / "c2"))
  many = amazon.build(str(tmp_path / "dien"), params(part_bytes=2000), str(tmp_path / "c3"))
  assert len(many[1]["files"]["train"]) > 2  # several parts, converted by parallel workers
  for d, meta in (bars, many):
    assert meta["stats"]["vocabularies"] == dien[1]["stats"]["vocabularies"]
    for split in ("train", "test"):
      a, b = decode_split(*dien, split), decode_split(d, meta, split)
      keys = lambda x: sorted(zip(x["label"], x["item_id"], x["user_id"], map(tuple, x["hist_item_id"])))
      if meta is bars[1] or split == "test":
        assert keys(a) == keys(b)
      else:  # each part drops its own remainder (< one block)
        assert set(keys(b)) <= set(keys(a))
        assert len(b["label"]) + meta["stats"]["dropped_train_rows"] == len(rows)


def write_raw(folder: Path) -> Path:
  """reviews_Toys_5.json (JSON lines) + meta_Toys.json (Python-literal dicts), 30 users."""
  rng = np.random.default_rng(3)
  folder.mkdir(parents=True, exist_ok=True)
  reviews = []
  for u in range(30):
    cat = u % 5
    for k in range(int(rng.integers(3, 8))):
      item = ITEMS[cat + 5 * int(rng.integers(0, 8))]
      reviews.append({"reviewerID": f"R{u}", "asin": item, "overall": 5.0, "unixReviewTime": 1_300_000_000 + 86400 * k})
  order = rng.permutation(len(reviews))
  (folder / "reviews_Toys_5.json").write_text("".join(json.dumps(reviews[i]) + "\n" for i in order))
  meta = [repr({"asin": x, "categories": [["Toys", "Games", CATE[x]], ["Other"]], "title": "it's"}) for x in ITEMS]
  (folder / "meta_Toys.json").write_text("\n".join(meta) + "\n")
  return folder


def test_raw_2014_dumps_prepare_the_dien_layout(tmp_path):
  folder = write_raw(tmp_path / "raw")
  p = params(max_len=3)
  prepared = amazon.prepare(amazon.find_layout(folder)[1], p, str(tmp_path / "cache"))
  reviews = [json.loads(line) for line in (folder / "reviews_Toys_5.json").read_text().splitlines()]
  by_user = {}
  for r in sorted(reviews, key=lambda r: (r["reviewerID"], r["unixReviewTime"], r["asin"])):
    by_user.setdefault(r["reviewerID"], []).append(r["asin"])
  split = {}
  for name, key in (("local_train_splitByUser", "train"), ("local_test_splitByUser", "test")):
    split[key] = [line.split("\t") for line in (prepared / name).read_text().splitlines()]
  assert len(split["test"]) == 2 * len(by_user)  # each user's last review: a negative, then the positive
  assert len(split["train"]) == 2 * sum(len(v) - 2 for v in by_user.values())  # first review: no history
  for rows in split.values():
    for neg, pos in zip(rows[::2], rows[1::2]):
      assert (neg[0], pos[0]) == ("0", "1") and neg[1] == pos[1] and neg[4:] == pos[4:] and neg[2] != pos[2]
      assert pos[3] == CATE[pos[2]] and neg[3] == CATE[neg[2]]  # the last level of the first category path
  for neg, pos in zip(split["test"][::2], split["test"][1::2]):
    items = by_user[pos[1]]
    assert pos[2] == items[-1] and pos[4].split("\x02") == items[-4:-1]  # the 3 most recent before it
  src_dir, meta = amazon.build(str(folder), p, str(tmp_path / "cache"))
  assert meta["params"]["layout"] == "dien" and meta["stats"]["rows"]["test"] == 2 * len(by_user)


def test_converted_data_trains(tmp_path):
  """BARS-converted data (decoded equal to the DIEN layout's above) trains DIN to the planted signal."""
  config = experiments.get_config("books:tiny")
  config.train.learning_rate = 1e-2
  config.data.validation = "test"  # the data set below is converted without a holdout
  folder = write_bars(tmp_path / "bars", samples(60), samples(20, seed=1))
  d, meta = amazon.build(
    str(folder), params(max_len=config.data.max_len, block_size=config.data.block_size), str(tmp_path / "cache")
  )
  source = pipeline.Source(d, FeatureSchema.from_dict(meta["schema"]), meta)
  losses, result = train_briefly("din", config, source, 150)  # (launch.py trains MIAN on the raw dumps below)
  assert np.mean(losses[-30:]) < np.mean(losses[:30]), losses
  assert result["auc"] > 0.7, result  # the candidate's category matches the history's: learned


def test_books_experiment_trains_on_raw_dumps_through_launch(tmp_path):
  folder = write_raw(tmp_path / "raw")
  run = launch(tmp_path, "books:tiny", f"data.dir={folder}", "train.steps=8")
  assert run.returncode == 0, run.stderr
  assert run.stdout.strip().splitlines()[-1].startswith("final test auc=")
  assert list((tmp_path / "cache").glob("amazon-prepared-Toys-*/local_train_splitByUser"))


def test_yelp_experiment_trains_and_plots_gim_without_context_fields(tmp_path, monkeypatch):
  """The yelp experiment reads the BARS layout; its data has no context fields, so GIM has no e_c / R_icim
  and `--plot gim` draws the inputs MIAN has."""
  folder = write_bars(tmp_path / "bars", growing_samples(), samples(20, seed=1))
  run = launch(tmp_path, "yelp:tiny", f"data.dir={folder}", "train.steps=6")
  assert run.returncode == 0, run.stderr
  plot = launch(tmp_path, "yelp:tiny", f"data.dir={folder}", "train.steps=6", extra=("--plot", "gim"))
  assert plot.returncode == 0, plot.stderr
  png = tmp_path / "w" / "gim_attention.png"
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  from mian_jax import predict

  config = experiments.get_config("yelp:tiny")
  config.data.dir = str(folder)
  monkeypatch.setenv("MIAN_JAX_CACHE", str(tmp_path / "cache"))
  weights, columns = predict.gim_weights(config, tmp_path / "w")
  # Figure 6's order, without e_c and R_icim, then the yelp experiment's candidate x history product
  assert columns == ("e_u", "R_iuim", "e_i", "R_ibim", "e_b", "p_ib")
  assert weights.shape == (14, 6) and np.allclose(weights.sum(1), 1.0, atol=1e-5)
