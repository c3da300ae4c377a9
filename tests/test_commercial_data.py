"""The generated commercial data: deterministic, cached, shaped like the paper's set, with a real ceiling."""

import csv

import numpy as np
import pytest

from benchmarks import commercial_ceiling, commercial_residuals
from mian_jax.data import commercial


def _params(**kw):
  base = dict(scale=0.0003, seed=5, max_len=50, days=30, test_days=3, block_size=64, shard_samples=4096)
  return commercial.Params(**{**base, **kw})


def test_deterministic_and_cached(tmp_path):
  d1, m1 = commercial.build(str(tmp_path / "a"), _params())
  d2, m2 = commercial.build(str(tmp_path / "b"), _params())
  for name in m1["files"]["train"] + m1["files"]["test"]:
    assert (d1 / name).read_bytes() == (d2 / name).read_bytes()
  stamp = (d1 / "meta.json").stat().st_mtime_ns
  d3, _ = commercial.build(str(tmp_path / "a"), _params())
  assert d3 == d1 and (d1 / "meta.json").stat().st_mtime_ns == stamp  # reused, not rewritten
  d4, _ = commercial.build(str(tmp_path / "a"), _params(seed=6))
  assert d4 != d1


def test_statistics_mirror_the_paper_and_each_interaction_matters(tmp_path):
  _, meta = commercial.build(str(tmp_path), _params(scale=0.003, shard_samples=40000))  # 10k test samples
  s = meta["stats"]
  assert 0.08 < s["label_rate"]["train"] < 0.12
  assert 0.74 < s["bayes_auc"] < 0.82
  for kind in ("behaviour", "user", "context"):
    assert s[f"auc_without_{kind}_interaction"] < s["bayes_auc"] - 0.015, kind
  assert 0.4 < s["share_behaviours_older_than_30_days"] < 0.6
  assert s["share_candidates_unrelated_to_history"] > 0.2
  assert abs(s["rows"]["test"] / (s["rows"]["train"] + s["rows"]["test"]) - 0.1) < 0.02
  schema = meta["schema"]
  groups = {f["group"] for f in schema["features"]}
  assert groups == {"item", "behaviour", "user", "context"}


def test_the_ceiling_table_puts_the_truth_first_and_the_propensity_a_small_part_of_it():
  rows = dict(commercial_ceiling.ceilings(scale=0.0003, seed=5, samples=20000))
  bayes = rows.pop("the truth (Bayes AUC)")
  assert 0.74 < bayes < 0.82 and all(auc < bayes for auc in rows.values())
  # the part no field reveals is small: a model of the fields can get close to the Bayes AUC
  assert bayes - rows["without the per-user propensity (no field reveals it)"] < 0.01
  assert bayes - rows["without candidate x behaviours"] > 0.03


def _write_scores(path, logit, rows=None):
  """A --predict output (row, user, probability) of the logits, rows in the given order."""
  rows = np.arange(len(logit)) if rows is None else rows
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["row", "user", "probability"])
    for r in rows:
      w.writerow([r, 0, f"{1 / (1 + np.exp(-logit[r])):.6f}"])


def test_the_residual_table_finds_the_truths_parts_in_a_runs_scores(tmp_path):
  folder, _ = commercial.build(str(tmp_path / "data"), _params(scale=0.002, shard_samples=40000))
  label, logit, parts = commercial_residuals.truth(folder)
  assert parts.shape == (len(label), 4) and np.allclose(parts.sum(1), logit)
  rng = np.random.default_rng(0)
  # a run that learned the behaviours at half their scale and adds noise of std 0.3; another with its own noise
  half = logit - 0.5 * parts[:, 0] + rng.normal(0, 0.3, len(logit))
  _write_scores(tmp_path / "half.csv", half, rows=rng.permutation(len(logit)))  # any row order
  _write_scores(tmp_path / "other.csv", logit + rng.normal(0, 0.3, len(logit)))
  lines = commercial_residuals.table(folder, [tmp_path / "half.csv", tmp_path / "other.csv"])
  half_row = next(line for line in lines if line.startswith("| half.csv"))
  coef = [float(c) for c in half_row.split("|")[3:7]]
  assert coef[0] == pytest.approx(0.5, abs=0.05) and all(c == pytest.approx(1.0, abs=0.05) for c in coef[1:])
  assert float(half_row.split("|")[-2]) == pytest.approx(0.3, abs=0.03)  # the residual is the noise
  corr = next(line for line in lines if line.startswith("residual correlation"))
  assert abs(float(corr.rsplit(" ", 1)[1])) < 0.1  # independent noise: averaging the runs removes it
  _write_scores(tmp_path / "short.csv", logit[:-1])
  with pytest.raises(SystemExit, match="error: .*short.csv: .* expected"):
    commercial_residuals.table(folder, [tmp_path / "short.csv"])
  bad = (tmp_path / "other.csv").read_text().replace(",0.", ",zero.", 1)
  (tmp_path / "bad.csv").write_text(bad)
  with pytest.raises(SystemExit, match="error: .*bad.csv: could not convert"):
    commercial_residuals.table(folder, [tmp_path / "bad.csv"])
