"""Where a run's scores on the generated commercial test split depart from the planted truth.

    python launch.py --experiment commercial --predict data_cache/commercial-<id> --out scores.csv
    python -m benchmarks.commercial_residuals data_cache/commercial-<id> scores.csv [more.csv ...]

The generator keeps the true logit of every test sample and its parts (`truth-*.npz`, in the test
records' order, which is `--predict`'s order on a data folder): candidate x behaviours, x user profile,
x context, and the rest (b0, the item bias, the per-user propensity). For each scores file (a `--predict`
output) the table gives its AUC, the least-squares fit of its logit on those four parts (a coefficient of
1 is a part learned at its true scale), the share of the logit's variance the parts explain (R^2) and the
residual's standard deviation: what the model puts in its logit that the truth does not hold. With two or
more files, the residuals' correlation between each pair and the AUC of the files' mean logit: residuals
that agree across runs (trained on the same samples) are set by those samples, not by the seed or the
configuration, and averaging runs does not remove them.
"""

from __future__ import annotations

import argparse
import csv
import itertools
from pathlib import Path

import numpy as np

from mian_jax import metrics

PARTS = ("behaviours", "user profile", "context", "rest")


def truth(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(labels [N], true logit [N], its parts [N, 4] in PARTS' order) of the test split, in record order."""
  files = sorted(folder.glob("truth-*.npz"))
  if not files:
    raise SystemExit(
      f"error: {folder}: no truth-*.npz (not a generated commercial data folder); "
      "give the data_cache/commercial-<id> folder a run trained on"
    )
  t = [np.load(f) for f in files]
  cat = lambda k: np.concatenate([x[k] for x in t]).astype(np.float64)
  logit = cat("_logit")
  beh, user, ctx = logit - cat("_no_beh"), logit - cat("_no_user"), logit - cat("_no_ctx")
  return cat("label"), logit, np.stack([beh, user, ctx, logit - beh - user - ctx], axis=1)


def read_logits(path: Path, n: int) -> np.ndarray:
  """The logits of a --predict output of n rows (row, user, probability), in row order."""
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  if len(rows) != n or (rows and not {"row", "probability"} <= set(rows[0])):
    raise SystemExit(
      f"error: {path}: {len(rows)} rows with columns {list(rows[0]) if rows else []}, expected {n} "
      "rows of row,user,probability (--predict on the same data folder)"
    )
  try:
    p = np.clip(np.array([float(r["probability"]) for r in rows]), 1e-6, 1 - 1e-6)
    order = np.array([int(r["row"]) for r in rows])
  except (TypeError, ValueError) as e:
    raise SystemExit(f"error: {path}: {e} (a --predict output has a row number and a probability per line)") from None
  return np.log(p / (1 - p))[np.argsort(order)]


def fit(logit: np.ndarray, parts: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
  """(coefficient per part, R^2, residual [N]) of the least-squares fit logit ~ parts + constant."""
  x = np.concatenate([parts, np.ones((len(parts), 1))], axis=1)
  coef, *_ = np.linalg.lstsq(x, logit, rcond=None)
  residual = logit - x @ coef
  return coef[:-1], 1.0 - residual.var() / logit.var(), residual


def table(folder: Path, scores: list[Path]) -> list[str]:
  label, logit, parts = truth(folder)
  lines = [
    f"{folder.name}: {len(label):,} test samples, Bayes AUC {metrics.auc(label, logit):.4f}",
    "| scores | AUC | " + " | ".join(f"coef. {p}" for p in PARTS) + " | R^2 | residual std |",
    "|---" * (4 + len(PARTS)) + "|",
  ]
  logits, residuals = [], []
  for path in scores:
    m = read_logits(path, len(label))
    coef, r2, residual = fit(m, parts)
    logits.append(m)
    residuals.append(residual)
    lines.append(
      f"| {path.name} | {metrics.auc(label, m):.4f} | "
      + " | ".join(f"{c:.3f}" for c in coef)
      + f" | {r2:.3f} | {residual.std():.3f} |"
    )
  lines.append(
    f"| the truth | {metrics.auc(label, logit):.4f} | " + " | ".join("1.000" for _ in PARTS) + " | 1.000 | 0.000 |"
  )
  if len(scores) > 1:
    lines.append("")
    for (i, a), (j, b) in itertools.combinations(enumerate(scores), 2):
      lines.append(f"residual correlation {a.name} / {b.name}: {np.corrcoef(residuals[i], residuals[j])[0, 1]:.3f}")
    lines.append(f"AUC of the {len(scores)} files' mean logit: {metrics.auc(label, np.mean(logits, axis=0)):.4f}")
  return lines


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("folder", type=Path, help="the generated data folder (data_cache/commercial-<id>)")
  ap.add_argument("scores", type=Path, nargs="+", help="--predict outputs on that folder")
  args = ap.parse_args()
  print("\n".join(table(args.folder, args.scores)))


if __name__ == "__main__":
  main()
