"""Exact AUC / gAUC / logloss against brute-force definitions."""

import numpy as np
import pytest

from mian_jax import metrics


def _pairwise_auc(y, s):
  pos, neg = s[y == 1], s[y == 0]
  diff = pos[:, None] - neg[None, :]
  return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / (len(pos) * len(neg))


def test_auc_with_ties_matches_pairwise_count():
  rng = np.random.default_rng(0)
  y = rng.integers(0, 2, 500)
  s = np.round(rng.random(500) + 0.3 * y, 1)  # rounding makes many ties
  assert abs(metrics.auc(y, s) - _pairwise_auc(y, s)) < 1e-12
  assert metrics.auc(y, y.astype(float)) == 1.0
  assert np.isnan(metrics.auc(np.ones(3), np.arange(3.0)))


def test_gauc_is_impression_weighted_over_users_with_both_labels():
  rng = np.random.default_rng(1)
  u = rng.integers(0, 30, 800)
  y = rng.integers(0, 2, 800)
  s = np.round(rng.random(800) + 0.2 * y, 2)
  num = den = 0.0
  for user in np.unique(u):
    m = u == user
    if 0 < y[m].sum() < m.sum():
      num += m.sum() * _pairwise_auc(y[m], s[m])
      den += m.sum()
  assert abs(metrics.gauc(y, s, u) - num / den) < 1e-12


def test_logloss():
  y = np.array([1, 0, 1])
  p = np.array([0.9, 0.2, 0.6])
  expected = -np.mean([np.log(0.9), np.log(0.8), np.log(0.6)])
  assert abs(metrics.logloss(y, p) - expected) < 1e-12


def test_float32_fast_paths_match_the_definitions_with_ties_and_negative_scores():
  """float32 scores take the sort-negatives / 64-bit-key paths; they agree with the pairwise counts."""
  rng = np.random.default_rng(2)
  u = rng.integers(0, 40, 1500)
  y = rng.integers(0, 2, 1500)
  s = (np.round(rng.normal(size=1500) + 0.3 * y, 1)).astype(np.float32)  # ties, scores below 0, -0.0 and 0.0
  assert abs(metrics.auc(y, s) - _pairwise_auc(y, s.astype(np.float64))) < 1e-12
  assert abs(metrics.gauc(y, s, u) - metrics.gauc(y, s.astype(np.float64), u)) < 1e-12  # lexsort path
  assert abs(metrics.gauc(y, s, u + 2**40) - metrics.gauc(y, s, u)) < 1e-12  # ids beyond 31 bits: lexsort


def test_nan_scores_are_refused_naming_how_many():
  y = np.array([0, 1, 0, 1, 1], np.float32)
  for dtype in (np.float32, np.float64):
    s = np.array([0.1, np.nan, 0.3, np.nan, 0.9], dtype)
    with pytest.raises(metrics.NaNScores, match="2 of 5 scores are NaN"):
      metrics.auc(y, s)
    with pytest.raises(metrics.NaNScores, match="2 of 5 scores are NaN"):
      metrics.gauc(y, s, np.array([1, 1, 2, 2, 2]))
  assert metrics.auc(y, np.array([0.1, 0.8, 0.3, 0.7, 0.9], np.float32)) == 1.0  # finite scores still rank
