"""DeLong's intervals for AUC differences (mian_jax/significance.py) and the sweep column built from them."""

import math

import numpy as np
import pytest

from mian_jax import metrics, significance, sweep
from mian_jax.train import predictions


def test_hand_computed_case():
  # Positives p1, p2 and negatives n1, n2, n3 scored by two models.
  y = np.array([1, 1, 0, 0, 0])
  a = np.array([0.9, 0.4, 0.5, 0.4, 0.1])
  b = np.array([0.2, 0.8, 0.3, 0.1, 0.6])
  # A: p1 is above all 3 negatives (1), p2 above n3 and tied with n2 (1.5 / 3); n1 is below p1 (1 / 2),
  # n2 below p1 and tied with p2 (1.5 / 2), n3 below both (1).
  v10, v01 = significance.components(y, a)
  np.testing.assert_allclose(v10, [1, 0.5])
  np.testing.assert_allclose(v01, [0.5, 0.75, 1])
  # B: V10 = [1/3, 1], V01 = [1/2, 1, 1/2]; both AUCs are the means of either component.
  aucs, _ = significance.auc_covariance(y, np.stack([a, b]))
  np.testing.assert_allclose(aucs, [0.75, 2 / 3])
  # A - B: V10 differences [2/3, -1/2] (sample variance 49/72, over m = 2), V01 differences [0, -1/4, 1/2]
  # (21/144, over n = 3): variance 49/144 + 7/144 = 7/18.
  d = significance.mean_difference(y, a, b)
  assert d.estimate == pytest.approx(1 / 12)
  assert d.se == pytest.approx(math.sqrt(7 / 18))
  assert d.low == pytest.approx(1 / 12 - 1.959963984540054 * math.sqrt(7 / 18))
  assert d.p_value == pytest.approx(math.erfc((1 / 12) / math.sqrt(7 / 18) / math.sqrt(2)))


def _brute_force(y, s):
  """DeLong's placement values by their definition: every positive against every negative."""
  pos, neg = s[y == 1], s[y == 0]
  psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
  return psi.mean(axis=1), psi.mean(axis=0)


def test_components_equal_their_definition_with_ties():
  rng = np.random.default_rng(0)
  y = (rng.random(700) < 0.3).astype(np.float32)
  for s in (rng.integers(0, 9, 700).astype(np.float32), rng.random(700), y * 0.3 + rng.random(700)):
    v10, v01 = significance.components(y, s)
    b10, b01 = _brute_force(y, s)
    np.testing.assert_allclose(v10, b10, atol=1e-12)
    np.testing.assert_allclose(v01, b01, atol=1e-12)
    assert v10.mean() == pytest.approx(metrics.auc(y, s), abs=1e-12)


def _binormal(rng, n, mu_a, mu_b, rho):
  """Two markers, correlation rho, unit variance, means mu on the positives and 0 on the negatives:
  AUC = Phi(mu / sqrt 2) each, a known difference."""
  y = rng.random(n) < 0.5
  z1, z2 = rng.standard_normal(n), rng.standard_normal(n)
  a = z1 + mu_a * y
  b = rho * z1 + math.sqrt(1 - rho**2) * z2 + mu_b * y
  return y, a, b


def _phi(x):
  return 0.5 * math.erfc(-x / math.sqrt(2))


def test_interval_covers_the_known_difference_95_percent_of_the_time():
  rng = np.random.default_rng(1)
  truth = _phi(1.0 / math.sqrt(2)) - _phi(0.8 / math.sqrt(2))  # 0.7602 - 0.7142
  hits = 0
  reps = 400
  for _ in range(reps):
    d = significance.mean_difference(*_binormal(rng, 600, 1.0, 0.8, 0.6))
    hits += d.low <= truth <= d.high
  assert 0.92 <= hits / reps <= 0.98  # 95% nominal; the binomial sd over 400 is 1.1%


def test_standard_error_agrees_with_a_paired_bootstrap():
  rng = np.random.default_rng(2)
  y, a, b = _binormal(rng, 2000, 1.0, 0.9, 0.7)
  d = significance.mean_difference(y, a, b)
  boot = []
  for _ in range(300):
    i = rng.integers(0, len(y), len(y))
    boot.append(metrics.auc(y[i], a[i]) - metrics.auc(y[i], b[i]))
  assert d.se == pytest.approx(np.std(boot, ddof=1), rel=0.15)


def test_mean_over_seeds_is_one_contrast():
  rng = np.random.default_rng(3)
  y, a0, b0 = _binormal(rng, 500, 1.0, 0.9, 0.5)
  a1, b1 = a0 + rng.normal(0, 0.3, 500), b0 + rng.normal(0, 0.3, 500)
  d = significance.mean_difference(y, np.stack([a0, a1]), np.stack([b0, b1]))
  expected = (metrics.auc(y, a0) + metrics.auc(y, a1)) / 2 - (metrics.auc(y, b0) + metrics.auc(y, b1)) / 2
  assert d.estimate == pytest.approx(expected, abs=1e-12)
  # The same model against itself: no difference, no variance.
  same = significance.mean_difference(y, np.stack([a0, a1]), np.stack([a0, a1]))
  assert same.estimate == pytest.approx(0, abs=1e-12) and same.se == pytest.approx(0, abs=1e-12)


def test_refuses_one_class_and_nan():
  with pytest.raises(ValueError, match="one class"):
    significance.components(np.ones(4), np.arange(4.0))
  with pytest.raises(ValueError, match="NaN"):
    significance.components(np.array([0, 1]), np.array([0.1, np.nan]))


def _trial(root, tid, y, p):
  (root / tid).mkdir(parents=True)
  predictions.write(root / tid / predictions.FILE, 7, y, p, np.arange(len(y)))
  return {
    "trial": tid,
    "train.seed": tid[-1],
    "status": "ok",
    "auc": metrics.auc(y, p),
    "gauc": 0.5,
    "logloss": 0.5,
    "samples_per_s": 1.0,
    "valid_auc": 0.5,
  }


def test_sweep_column_from_the_trials_predictions(tmp_path):
  rng = np.random.default_rng(4)
  y, a, b = _binormal(rng, 800, 1.0, 0.7, 0.5)
  b2 = b + rng.normal(0, 0.2, 800)
  rows = [{**_trial(tmp_path, f"name=a,seed={s}", y, p), "model.name": "a"} for s, p in enumerate((a, a * 1.1))]
  rows += [{**_trial(tmp_path, f"name=b,seed={s}", y, p), "model.name": "b"} for s, p in enumerate((b, b2))]
  other = rng.random(800) < 0.5  # a trial scored on other rows: its setting gets no interval
  rows += [{**_trial(tmp_path, "name=c,seed=0", other, a), "model.name": "c"}]
  groups = sweep.groups_over_seeds(rows)
  diffs = sweep.differences(tmp_path, groups)
  assert set(diffs) == {"name=a", "name=b"}
  expected = significance.mean_difference(y, np.stack([b, b2]), np.stack([a, a * 1.1]))
  assert diffs["name=b"] == expected and expected.high < 0  # b is worse, and the interval says so
  text = sweep.results_markdown(rows, diffs=diffs)
  assert "| name=a | 2 |" in text and "| best |" in text
  assert f"| {expected.cell()} |" in text
  sweep.summarize(tmp_path, rows)
  settings = (tmp_path / "settings.csv").read_text()
  assert "auc_minus_best,ci95_low,ci95_high,p_value" in settings.splitlines()[0]


def test_predictions_file_damaged_or_missing(tmp_path):
  path = tmp_path / predictions.FILE
  assert predictions.step_of(path) is None
  predictions.write(path, 12, np.array([0, 1]), np.array([0.2, 0.7]), np.array([3, 4]))
  p = predictions.read(path)
  assert p.step == 12 and p.prob_n.dtype == np.float32 and list(p.group_n) == [3, 4]
  path.write_bytes(path.read_bytes()[:40])
  with pytest.raises(predictions.Unreadable, match="not a whole predictions file"):
    predictions.read(path)
  assert predictions.step_of(path) is None


def test_mian_against_the_best_baseline_has_its_interval(tmp_path):
  """results.md's line "mian vs the best other model" carries DeLong's interval of that difference (not the
  one against the table's best, which may be a MIAN variant)."""
  rng = np.random.default_rng(5)
  y, a, b = _binormal(rng, 800, 1.0, 0.7, 0.5)
  rows = [{**_trial(tmp_path, f"name=mian,seed={s}", y, p), "model.name": "mian"} for s, p in enumerate((a, a * 1.1))]
  rows += [{**_trial(tmp_path, f"name=din,seed={s}", y, p), "model.name": "din"} for s, p in enumerate((b, b * 0.9))]
  rows += [{**_trial(tmp_path, "name=mian_paper,seed=0", y, a + 0.5 * y), "model.name": "mian_paper"}]
  text = sweep.summarize(tmp_path, rows)
  expected = significance.mean_difference(y, np.stack([a, a * 1.1]), np.stack([b, b * 0.9]))
  assert "| name=mian_paper | 1 |" in text and "| best |" in text  # the table's best: a MIAN variant
  assert f"mian vs the best other model (name=din): AUC {expected.estimate:+.4f}, 95% CI [{expected.low:+.4f}, " in text
  assert expected.low > 0
