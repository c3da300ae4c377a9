"""gAUC groups by the user's raw identity, not by the encoded user id: test users absent from training
all hold OOV id 0 in the user-key feature, and grouping by it made them one user (gAUC then came out
near AUC). The tabular converters store `user_group` (known users keep their vocabulary id, every
other raw key gets an id of its own), evaluation groups by it, and --predict writes the user."""

import csv
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from helpers import decode_split, launch
from mian_jax.data import custom, tabular

SCHEMA = """
train = "train.csv"
test = "test.csv"
label = "clk"
user_key = "uid"

[columns.ad]
group = "item"
kind = "categorical"
vocab = "ad"

[columns.clicks]
group = "behaviour"
kind = "sequence"
vocab = "ad"
separator = "|"

[columns.price]
group = "context"
kind = "numeric"
"""
HEADER = "clk,uid,ad,clicks,price"
# (user, label, price): the score is the price, so each user's AUC is fixed by construction. new1: 1,
# new2: 0, new3: 0.25, u3 (seen in training): 0.5, new4: positives only (left out of gAUC, not of AUC).
TEST = [
  ("new1", 1, 90),
  ("new2", 1, 15),
  ("u3", 1, 70),
  ("new3", 1, 50),
  ("new1", 1, 80),
  ("new4", 1, 98),
  ("new2", 1, 5),
  ("new3", 0, 40),
  ("u3", 0, 65),
  ("new1", 0, 10),
  ("new3", 0, 60),
  ("new2", 0, 85),
  ("u3", 1, 35),
  ("new1", 0, 20),
  ("new4", 1, 99),
  ("new3", 1, 30),
  ("new2", 0, 95),
  ("u3", 0, 45),
]
UNSEEN = ["new1", "new2", "new3", "new4"]  # in order of first appearance in test.csv


def write_data(folder: Path) -> Path:
  rng = np.random.default_rng(0)
  train = []
  for u in range(8):  # 64 rows: two batches of 32 for custom:tiny
    for _ in range(8):
      hist = "|".join(f"a{a}" for a in rng.integers(0, 10, int(rng.integers(0, 4))))
      train.append(f"{int(rng.integers(0, 2))},u{u},a{int(rng.integers(0, 10))},{hist},{rng.uniform(0, 100):.2f}")
  test = [f"{y},{u},a{i % 10},a1|a2,{price}" for i, (u, y, price) in enumerate(TEST)]
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "train.csv").write_text("\n".join([HEADER] + train) + "\n")
  (folder / "test.csv").write_text("\n".join([HEADER] + test) + "\n")
  (folder / "schema.toml").write_text(SCHEMA)
  return folder


def pairwise_auc(y: np.ndarray, s: np.ndarray) -> float:
  pos, neg = s[y == 1], s[y == 0]
  return float(
    ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
  )


def per_user_gauc(users: np.ndarray, y: np.ndarray, s: np.ndarray) -> float:
  """Impression-weighted mean of the per-user AUCs of users with both labels (DIN's gAUC), by raw user."""
  total = weight = 0.0
  for u in dict.fromkeys(users.tolist()):
    m = users == u
    if 0 < y[m].sum() < m.sum():
      total += pairwise_auc(y[m], s[m]) * m.sum()
      weight += m.sum()
  return total / weight


def config_for(folder: Path):
  import experiments

  config = experiments.get_config("custom:tiny")
  config.data.dir, config.data.schema = str(folder), str(folder / "schema.toml")
  config.data.validation = "test"
  return config


def test_gauc_groups_test_users_unseen_in_training_by_their_raw_key(tmp_path, monkeypatch):
  from mian_jax import data, export
  from mian_jax.train import partition
  from mian_jax.train.run import Run

  monkeypatch.setenv("MIAN_JAX_CACHE", str(tmp_path / "cache"))
  folder = write_data(tmp_path / "in")
  config = config_for(folder)
  src = data.open_source(config.data)
  # The fixed predictions: the (standardised) price. evaluate() sees only what the shards hold.
  mesh = partition.make_mesh(jax.devices()[:1])
  got = Run.build(config, src=src, mesh=mesh).evaluate(
    None, eval_step=lambda params, batch: jax.nn.sigmoid(batch["price"])
  )

  users = np.array([u for u, _, _ in TEST])
  y = np.array([l for _, l, _ in TEST], np.float64)
  s = np.array([p for _, _, p in TEST], np.float64)
  expected = per_user_gauc(users, y, s)
  assert expected == pytest.approx(7 / 16)  # (1 * 4 + 0 * 4 + 0.25 * 4 + 0.5 * 4) / 16
  assert got["auc"] == pytest.approx(pairwise_auc(y, s), abs=1e-6)
  assert got["gauc"] == pytest.approx(expected, abs=1e-6)
  assert abs(got["gauc"] - got["auc"]) > 0.05
  merged = np.where(np.isin(users, UNSEEN), "OOV", users)  # what grouping by the encoded id computed
  assert abs(per_user_gauc(merged, y, s) - expected) > 0.05
  assert src.group_key == "user_group"
  # Stored, never a model input: the exported / served inputs stay what they were.
  assert not src.schema["user_group"].embed and "user_group" not in export.input_names(src.schema)
  assert "user_group" not in src.schema.tables


def test_user_group_keeps_training_ids_and_numbers_unseen_keys_in_order(tmp_path):
  folder = write_data(tmp_path / "in")
  options = tabular.Options(max_len=3, block_size=8, seed=0, max_bad_rows=0, part_bytes=1 << 20, embed_user_id=False)
  directory, meta = custom.build(str(folder), str(folder / "schema.toml"), options, str(tmp_path / "cache"))
  vocab = json.loads((directory / "vocab" / "uid.json").read_text())
  n = len(vocab)
  assert n == 8 and meta["stats"]["user_groups"] == {"field": "user_group", "unseen_users": len(UNSEEN)}
  assert json.loads((directory / tabular.GROUPS_FILE).read_text()) == UNSEEN
  test = decode_split(directory, meta, "test")  # file order
  for row, (user, _, _) in enumerate(TEST):
    if user in vocab:  # seen in training: the group is its vocabulary id, the id the model reads
      assert test["user_group"][row] == test["uid"][row] == vocab.index(user) + 1
    else:  # unseen: OOV id 0 for the model, a group of its own from n + 1 on
      assert test["uid"][row] == 0 and test["user_group"][row] == n + 1 + UNSEEN.index(user)
  train = decode_split(directory, meta, "train")
  np.testing.assert_array_equal(train["user_group"], train["uid"])  # every training user is known

  # Users held out of the training files (data.validation=holdout without valid files) are missing from
  # the vocabulary too: each keeps a group of its own in the validation split.
  held = tabular.Options(**{**options.__dict__, "holdout": True, "holdout_fraction": 0.5})
  directory, meta = custom.build(str(folder), str(folder / "schema.toml"), held, str(tmp_path / "cache"))
  vocab = json.loads((directory / "vocab" / "uid.json").read_text())
  out = [f"u{u}" for u in range(8) if f"u{u}" not in vocab]
  valid = decode_split(directory, meta, "valid")
  assert out and (valid["uid"] == 0).all() and len(np.unique(valid["user_group"])) == len(out)
  assert valid["user_group"].min() > len(vocab)
  assert json.loads((directory / tabular.GROUPS_FILE).read_text())[: len(out)] == sorted(out, key=lambda u: int(u[1:]))


def test_predict_writes_the_raw_user_of_every_row(tmp_path):
  folder = write_data(tmp_path / "in")
  sets = (f"data.dir={folder}", f"data.schema={folder / 'schema.toml'}", "data.validation=test", "train.steps=2")
  run = launch(tmp_path, "custom:tiny", *sets)
  assert run.returncode == 0, run.stderr
  out = tmp_path / "scores.csv"
  scored = launch(tmp_path, "custom:tiny", *sets, extra=("--predict", str(folder / "test.csv"), "--out", str(out)))
  assert scored.returncode == 0, scored.stderr
  assert out.read_text().splitlines()[0] == "row,user,probability"
  with out.open() as f:
    rows = list(csv.DictReader(f))
  assert [int(r["row"]) for r in rows] == list(range(len(TEST)))
  assert [r["user"] for r in rows] == [u for u, _, _ in TEST]  # seen (u3) and unseen users, raw
  probs = np.array([float(r["probability"]) for r in rows])
  assert np.all((probs > 0) & (probs < 1))
