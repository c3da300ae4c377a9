"""Confidence intervals for AUC differences on shared test rows: DeLong's test for correlated AUCs.

Two models scored on the same test rows have correlated AUCs; DeLong, DeLong & Clarke-Pearson (1988)
give the covariance of any set of such AUCs from the rows themselves. With m positives and n negatives,
each model k has structural components (placement values, ties counted as half)

    V10_k[i] = (#{negatives j: s_k[j] < s_k[i]} + #{ties}/2) / n     for each positive i   ([m])
    V01_k[j] = (#{positives i: s_k[i] > s_k[j]} + #{ties}/2) / m     for each negative j   ([n])

whose means are AUC_k. For a contrast c (a weight per model), c.AUC is estimated with variance

    var(c.AUC) = var_i(sum_k c_k V10_k[i]) / m + var_j(sum_k c_k V01_k[j]) / n     (sample variances, ddof 1)

and the interval is c.AUC +- z * sqrt(var) (z = 1.96 for 95%). The components come from midranks (Sun &
Xu 2014, "fast DeLong"): O(N log N) per model, not the O(mn) pair count.

A sweep table compares settings run with several seeds: the contrast is the mean AUC over one setting's
seeds minus the mean over the best setting's seeds (c = 1/s_a on the first, -1/s_b on the second), so the
seeds' variation is in the estimate and the rows shared by every trial are counted once.

Predictions come from each run's `test_predictions.npz` (train/predictions.py), one row per test row in
the split's order; every trial of a comparison must hold the same rows (their labels are checked).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


@dataclasses.dataclass(frozen=True)
class Difference:
  """estimate +- its interval: a contrast of AUCs on the same rows."""

  estimate: float
  se: float
  z: float = Z95

  @property
  def low(self) -> float:
    return self.estimate - self.z * self.se

  @property
  def high(self) -> float:
    return self.estimate + self.z * self.se

  @property
  def p_value(self) -> float:
    """Two-sided, against a difference of 0."""
    if self.se == 0:
      return 0.0 if self.estimate != 0 else 1.0
    return math.erfc(abs(self.estimate) / self.se / math.sqrt(2))

  def cell(self, digits: int = 4) -> str:
    return f"{self.estimate:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def _midranks(x_n: np.ndarray) -> np.ndarray:
  """1-based ranks of x, ties given the mean of their ranks."""
  order = np.argsort(x_n, kind="stable")
  sorted_x = x_n[order]
  change = np.empty(len(x_n), bool)
  change[:1] = True
  np.not_equal(sorted_x[1:], sorted_x[:-1], out=change[1:])
  starts = np.flatnonzero(change)
  ends = np.append(starts[1:], len(x_n))  # exclusive
  mean_rank = (starts + ends + 1) / 2.0  # ranks starts+1 .. ends
  out = np.empty(len(x_n))
  out[order] = np.repeat(mean_rank, ends - starts)
  return out


def components(labels_n: np.ndarray, scores_n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(V10 [m], V01 [n]): the structural components of one model's AUC (their means are its AUC)."""
  y = np.asarray(labels_n).astype(bool).ravel()
  s = np.asarray(scores_n, np.float64).ravel()
  if len(s) != len(y):
    raise ValueError(f"{len(s)} scores for {len(y)} labels")
  if np.isnan(s).any():
    raise ValueError(f"{int(np.isnan(s).sum())} scores are NaN")
  m, n = int(y.sum()), int((~y).sum())
  if m == 0 or n == 0:
    raise ValueError("the rows hold one class only: AUC is undefined")
  pos, neg = s[y], s[~y]
  all_ranks = _midranks(np.concatenate([pos, neg]))
  # A positive's rank among all minus its rank among the positives = negatives below it (+ ties / 2).
  v10 = (all_ranks[:m] - _midranks(pos)) / n
  # A negative's rank among all minus its rank among the negatives = positives below it; the rest are above.
  v01 = 1.0 - (all_ranks[m:] - _midranks(neg)) / m
  return v10, v01


def auc_covariance(labels_n: np.ndarray, scores_kn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(AUC [K], covariance [K, K]) of K models' AUCs on the same rows (DeLong 1988)."""
  parts = [components(labels_n, s) for s in np.atleast_2d(scores_kn)]
  v10_km = np.stack([p[0] for p in parts])
  v01_kn = np.stack([p[1] for p in parts])
  m, n = v10_km.shape[1], v01_kn.shape[1]
  cov = (
    np.cov(v10_km, ddof=1).reshape(len(parts), len(parts)) / m
    + np.cov(v01_kn, ddof=1).reshape(len(parts), len(parts)) / n
  )
  return v10_km.mean(axis=1), cov


def contrast(labels_n: np.ndarray, scores_kn: np.ndarray, weights_k: np.ndarray, z: float = Z95) -> Difference:
  """sum_k weights_k AUC_k with DeLong's standard error."""
  weights_k = np.asarray(weights_k, np.float64)
  aucs, cov = auc_covariance(labels_n, scores_kn)
  if len(weights_k) != len(aucs):
    raise ValueError(f"{len(weights_k)} weights for {len(aucs)} models")
  return Difference(float(weights_k @ aucs), float(math.sqrt(max(weights_k @ cov @ weights_k, 0.0))), z)


def mean_difference(labels_n: np.ndarray, a_kn: np.ndarray, b_kn: np.ndarray, z: float = Z95) -> Difference:
  """Mean AUC over the runs of A (rows of a_kn, e.g. its seeds) minus the mean over B's, on the same rows."""
  a_kn, b_kn = np.atleast_2d(a_kn), np.atleast_2d(b_kn)
  weights = np.concatenate([np.full(len(a_kn), 1.0 / len(a_kn)), np.full(len(b_kn), -1.0 / len(b_kn))])
  return contrast(labels_n, np.concatenate([a_kn, b_kn]), weights, z)
