"""The validation split (data.validation) and model selection on it.

Converters: MovieLens holds out each user's ratings before its test ratings; the Amazon / Yelp layouts
each user's last training sample (the rows with the user's longest history); custom data the schema's
`valid` files or a seeded share of the users; commercial the last training day. Nothing is fitted on
the validation rows (vocabularies). The trainer picks the best checkpoint by the validation AUC
(=holdout), the test AUC (=test) or takes the latest (=none), reports that checkpoint's test metrics,
and stops early on train.early_stop_patience."""

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import decode_split
from mian_jax.data import amazon, movielens
from test_amazon import growing_samples, params as amazon_params, samples, write_bars
from test_custom import HEADER, build as custom_build, write_csv
from test_e2e import _run
from test_movielens import _params as ml_params, write_100k


def test_movielens_holds_out_the_ratings_before_each_users_test_ratings(tmp_path):
  folder = write_100k(tmp_path / "ml")
  raw = movielens.read_raw(*movielens.find_layout(folder))
  s = movielens.samples(raw, ml_params(valid_per_user=2))
  for u in np.unique(s["user"]):
    idx = np.flatnonzero(s["user"] == u)  # the user's samples in time order
    assert s["test"][idx].tolist()[-1] and s["test"][idx].sum() == 1
    assert s["valid"][idx].tolist() == [False] * (len(idx) - 3) + [True, True, False]
    assert s["train"][idx].sum() == len(idx) - 3
  # Nothing is fitted on validation rows: the item vocabulary holds exactly the training rows' movies.
  train_items = set(s["raw_item"][s["train"]].tolist())
  assert set(s["vocabs"]["item_id"]) == train_items
  d, meta = movielens.build(str(folder), ml_params(valid_per_user=2), str(tmp_path / "cache"))
  assert meta["stats"]["rows"] == {"train": int(s["train"].sum()), "valid": 8, "test": 4}
  valid = decode_split(d, meta, "valid")
  assert len(valid["label"]) == 8 and sorted(set(valid["user_id"].tolist())) == [1, 2, 3, 4]


def test_bars_layout_holds_out_each_users_last_training_pair(tmp_path):
  rows = growing_samples()
  folder = write_bars(tmp_path / "bars", rows, samples(20, seed=1))
  d, meta = amazon.build(str(folder), amazon_params(holdout=True, block_size=2), str(tmp_path / "cache"))
  valid, train = decode_split(d, meta, "valid"), decode_split(d, meta, "train")
  assert meta["stats"]["rows"]["valid"] == 60 and meta["stats"]["rows"]["train"] == len(rows) - 60
  users = json.loads((d / "vocab" / "user.json").read_text())
  valid_users = {users[i - 1] for i in valid["user_id"].tolist()}
  assert valid_users == {f"U{u}" for u in range(30)}  # "solo" has a single pair: it stays in train
  for u in range(30):  # the held-out pair is the user's longest history, one positive and one negative
    uid = users.index(f"U{u}") + 1
    longest = max(h for h, v in zip(train["hist_len"], train["user_id"]) if v == uid)
    held = valid["hist_len"][valid["user_id"] == uid]
    assert held.tolist() == [min(longest + 1, 5)] * 2 and valid["label"][valid["user_id"] == uid].sum() == 1
  # Without a holdout nothing is carved, and the same data keeps every training row.
  _, whole = amazon.build(str(folder), amazon_params(holdout=False, block_size=2), str(tmp_path / "cache"))
  assert whole["stats"]["rows"]["valid"] == 0 and whole["stats"]["rows"]["train"] == len(rows)


def test_custom_data_holds_out_a_share_of_users_or_reads_valid_files(tmp_path):
  folder = write_csv(tmp_path / "csv")
  rng = np.random.default_rng(0)
  lines = [HEADER] + [
    f"{rng.integers(0, 2)},u{u},a{rng.integers(1, 5)},a1|a2,F,plain,{rng.integers(1, 9)},x"
    for u in range(40)
    for _ in range(3)
  ]
  (folder / "train-0.csv").write_text("\n".join(lines) + "\n")
  d, meta = custom_build(folder, tmp_path / "cache", holdout=True, holdout_fraction=0.25)
  train, valid = decode_split(d, meta, "train"), decode_split(d, meta, "valid")
  users = json.loads((d / "vocab" / "uid.json").read_text())
  held = {int(u[1:]) for u in {f"u{i}" for i in range(40)} - set(users)}  # not in the training vocabulary
  assert 3 <= len(held) <= 20 and len(valid["label"]) == 3 * len(held)  # every row of a held-out user
  assert len(train["label"]) > 0 and (train["uid"] != 0).all()  # no held-out user's row trains
  assert set(valid["uid"].tolist()) == {0}  # its users are unseen in training: OOV id 0
  again = custom_build(folder, tmp_path / "cache2", holdout=True, holdout_fraction=0.25)[1]
  assert again["stats"]["rows"] == meta["stats"]["rows"]  # seeded: the same users every time
  # A `valid` key names the validation files instead.
  schema = (folder / "schema.toml").read_text()
  (folder / "schema.toml").write_text(schema.replace('test = "test.csv"', 'test = "test.csv"\nvalid = "test.csv"'))
  _, meta = custom_build(folder, tmp_path / "cache3", holdout=True)
  assert meta["stats"]["rows"]["valid"] == meta["stats"]["rows"]["test"] == 2


# The checkpoint choice and early stopping do not depend on the model: DIN, which compiles in about half of
# MIAN's time.
MODEL = ("--model", "din")


def _events(workdir: Path) -> list[dict]:
  return [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("validation", ["holdout", "test"])
def test_best_checkpoint_is_chosen_on_validation_and_reports_its_test_metrics(tmp_path, data_root, validation):
  w = tmp_path / "w"
  run = _run(
    w,
    data_root,
    *MODEL,
    "--set",
    f"data.validation={validation}",
    "--set",
    "train.steps=30",
    "--set",
    "train.eval_every=6",
    "--set",
    "train.learning_rate=0.03",
  )
  assert run.returncode == 0, run.stderr
  events = _events(w)
  split = "valid" if validation == "holdout" else "test"
  if validation == "test":
    assert not [e for e in events if e["split"] == "valid"]
  scored = {e["step"]: e for e in events if e["split"] == split}
  tests = {e["step"]: e for e in events if e["split"] == "test"}
  assert sorted(scored) == [6, 12, 18, 24, 30]
  best = max(scored, key=lambda s: scored[s]["auc"])
  result = json.loads((w / "result.json").read_text())
  assert result["best_step"] == best and result["selected_on"] == split
  assert result["auc"] == tests[best]["auc"] and result["logloss"] == tests[best]["logloss"]
  last = run.stdout.strip().splitlines()[-1]
  assert last.startswith(f"final test auc={tests[best]['auc']:.4f}")
  assert f"(best {split} auc={scored[best]['auc']:.4f} at step {best})" in last
  if validation == "holdout":
    assert result["valid_auc"] == scored[best]["auc"]


def test_early_stopping_and_no_selection(tmp_path, data_root):
  w = tmp_path / "stop"
  run = _run(
    w,
    data_root,
    *MODEL,
    "--set",
    "train.steps=48",
    "--set",
    "train.eval_every=2",
    "--set",
    "train.early_stop_patience=1",
    "--set",
    "train.learning_rate=0.05",
  )
  assert run.returncode == 0, run.stderr
  valid = [e for e in _events(w) if e["split"] == "valid"]
  aucs = [e["auc"] for e in valid]
  # It stopped at the first evaluation that did not beat the best before it, and not before.
  first_worse = next(i for i in range(1, len(aucs)) if aucs[i] <= max(aucs[:i]))
  assert len(aucs) == first_worse + 1 and valid[-1]["step"] < 48
  assert "early stop at step" in run.stdout
  stopped = json.loads((w / "result.json").read_text())  # where it stopped, in steps and epochs
  assert stopped["step"] == valid[-1]["step"] and stopped["best_step"] < stopped["step"]
  assert 0 < stopped["best_epoch"] < stopped["epoch"]
  assert abs(stopped["best_epoch"] / stopped["epoch"] - stopped["best_step"] / stopped["step"]) < 0.02
  none = _run(
    tmp_path / "none",
    data_root,
    *MODEL,
    "--set",
    "data.validation=none",
    "--set",
    "train.steps=12",
    "--set",
    "train.eval_every=6",
  )
  assert none.returncode == 0, none.stderr
  result = json.loads((tmp_path / "none" / "result.json").read_text())
  assert result["best_step"] == 12 and result["selected_on"] is None
  assert "(latest evaluation, step 12; data.validation=none)" in none.stdout
