"""Exact ranking metrics over a whole test set: AUC, gAUC, logloss (numpy, vectorised).

AUC is the Mann-Whitney statistic with tied scores counted as half (average ranks), so it is exact,
not a histogram approximation. gAUC is the impression-weighted mean of per-user AUCs over users that
have both a click and a non-click in the test set (the DIN paper's definition).
"""

from __future__ import annotations

import numpy as np


def _tie_average_ranks(sorted_keys_change: np.ndarray, base: np.ndarray) -> np.ndarray:
  """Average 1-based rank inside each run of equal keys; `base` are the plain ranks (sorted order)."""
  starts = np.flatnonzero(sorted_keys_change)
  sums = np.add.reduceat(base, starts)
  counts = np.diff(np.append(starts, len(base)))
  return np.repeat(sums / counts, counts)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
  y = np.asarray(labels).astype(bool).ravel()
  s = np.asarray(scores, np.float64).ravel()
  pos = int(y.sum())
  neg = len(y) - pos
  if pos == 0 or neg == 0:
    return float("nan")
  order = np.argsort(s, kind="stable")
  ss = s[order]
  change = np.empty(len(ss), bool)
  change[0] = True
  change[1:] = ss[1:] != ss[:-1]
  ranks = _tie_average_ranks(change, np.arange(1, len(ss) + 1, dtype=np.float64))
  return float((ranks[y[order]].sum() - pos * (pos + 1) / 2) / (pos * neg))


def gauc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
  y = np.asarray(labels).astype(np.float64).ravel()
  s = np.asarray(scores, np.float64).ravel()
  g = np.asarray(groups).ravel()
  if len(y) == 0:
    return float("nan")
  order = np.lexsort((s, g))
  y, s, g = y[order], s[order], g[order]
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
