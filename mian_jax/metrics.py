"""Exact ranking metrics over a whole test set: AUC, gAUC, logloss (numpy, vectorised).

AUC is the Mann-Whitney statistic with tied scores counted as half, so it is exact, not a histogram
approximation; NaN scores are refused (NaNScores, saying how many) rather than ranked. gAUC is the impression-weighted mean of per-user AUCs over users that have both a click
and a non-click in the test set (the DIN paper's definition).
Speed (10M predictions in a few seconds): AUC sorts only the negatives' scores and binary-searches
the positives; gAUC sorts one 64-bit key per row (user id, the float32 score's order-preserving bits, the label)
instead of a lexsort and gathers. Scores wider than float32, or user ids outside [0, 2^31), take the
general lexsort path; both are exact.
"""

from __future__ import annotations

import numpy as np


class NaNScores(ValueError):
  """Scores holding NaN cannot be ranked: AUC and gAUC refuse them (the message says how many)."""


def _refuse_nan(s: np.ndarray) -> None:
  if np.issubdtype(s.dtype, np.floating):
    bad = int(np.isnan(s).sum())
    if bad:
      raise NaNScores(f"{bad:,} of {len(s):,} scores are NaN; AUC cannot rank them")


def _tie_average_ranks(sorted_keys_change: np.ndarray, base: np.ndarray) -> np.ndarray:
  """Average 1-based rank inside each run of equal keys; `base` are the plain ranks (sorted order)."""
  starts = np.flatnonzero(sorted_keys_change)
  sums = np.add.reduceat(base, starts)
  counts = np.diff(np.append(starts, len(base)))
  return np.repeat(sums / counts, counts)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
  y = np.asarray(labels).astype(bool).ravel()
  s = np.asarray(scores).ravel()
  if s.dtype not in (np.float32, np.float16):
    s = s.astype(np.float64)
  _refuse_nan(s)
  pos = int(y.sum())
  neg = len(y) - pos
  if pos == 0 or neg == 0:
    return float("nan")
  negatives = np.sort(s[~y])
  positives = np.sort(s[y])  # sorted queries: cache-friendly binary searches
  below = np.searchsorted(negatives, positives, side="left").sum(dtype=np.int64)
  below_or_tied = np.searchsorted(negatives, positives, side="right").sum(dtype=np.int64)
  return float((below + below_or_tied) / 2 / pos / neg)


def _sortable_bits(s: np.ndarray) -> np.ndarray:
  """float32 -> uint32 whose unsigned order is the floats' order (-0.0 and 0.0 alike: x + 0.0 = +0.0)."""
  bits = (s + np.float32(0.0)).view(np.uint32)
  return np.where(bits >> 31, ~bits, bits | np.uint32(0x80000000))


def _sorted_by_group_and_score(y: np.ndarray, s: np.ndarray, g: np.ndarray):
  """(labels, score keys, groups) sorted by (group, score): equal score keys <=> tied scores."""
  if s.dtype == np.float32 and np.issubdtype(g.dtype, np.integer) and g.min() >= 0 and g.max() < 2**31:
    # One 64-bit key per row: group | score bits | label. np.sort of it beats any argsort + gathers.
    key = (g.astype(np.uint64) << np.uint64(33)) | (_sortable_bits(s).astype(np.uint64) << np.uint64(1))
    key = np.sort(key | (y > 0).astype(np.uint64))
    return (key & np.uint64(1)).astype(np.float64), key >> np.uint64(1), key >> np.uint64(33)
  order = np.lexsort((s, g))
  return y[order], s[order], g[order]


def gauc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
  y = np.asarray(labels).astype(np.float64).ravel()
  s = np.asarray(scores).ravel()
  if s.dtype != np.float32:
    s = s.astype(np.float64)
  g = np.asarray(groups).ravel()
  _refuse_nan(s)
  if len(y) == 0:
    return float("nan")
  y, s, g = _sorted_by_group_and_score(y, s, g)
  new_group = np.empty(len(g), bool)
  new_group[0] = True
  new_group[1:] = g[1:] != g[:-1]
  group_start = np.flatnonzero(new_group)
  group_size = np.diff(np.append(group_start, len(g)))
  rank_in_group = np.arange(len(g)) - np.repeat(group_start, group_size) + 1.0
  tie_change = new_group.copy()
  tie_change[1:] |= s[1:] != s[:-1]
  ranks = _tie_average_ranks(tie_change, rank_in_group)
  pos = np.add.reduceat(y, group_start)
  neg = group_size - pos
  pos_rank_sum = np.add.reduceat(ranks * y, group_start)
  ok = (pos > 0) & (neg > 0)
  if not ok.any():
    return float("nan")
  per_group = (pos_rank_sum[ok] - pos[ok] * (pos[ok] + 1) / 2) / (pos[ok] * neg[ok])
  return float(np.average(per_group, weights=group_size[ok]))


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
  y = np.asarray(labels, np.float64).ravel()
  p = np.clip(np.asarray(probs, np.float64).ravel(), eps, 1 - eps)
  return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def evaluate(labels: np.ndarray, probs: np.ndarray, groups: np.ndarray) -> dict[str, float]:
  return {"auc": auc(labels, probs), "gauc": gauc(labels, probs, groups), "logloss": logloss(labels, probs)}
