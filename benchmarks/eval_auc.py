"""Benchmark 5: exact AUC and gAUC (mian_jax.metrics) over 10M predictions from 500k users.

python -m benchmarks.eval_auc [--n 10000000]
"""

import argparse
import statistics
import time

from benchmarks.common import np, report
from mian_jax import metrics


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--n", type=int, default=10_000_000)
  p.add_argument("--users", type=int, default=500_000)
  args = p.parse_args(argv)
  rng = np.random.default_rng(0)
  users = rng.integers(0, args.users, args.n)
  labels = (rng.random(args.n) < 0.1).astype(np.float32)
  probs = np.clip(0.1 + 0.1 * labels + 0.1 * rng.normal(size=args.n), 0, 1).astype(np.float32)
  rows = []
  for name, fn in (
    ("auc", lambda: metrics.auc(labels, probs)),
    ("gauc", lambda: metrics.gauc(labels, probs, users)),
    ("evaluate (auc + gauc + logloss)", lambda: metrics.evaluate(labels, probs, users)),
  ):
    times = []
    for _ in range(3):
      t = time.perf_counter()
      fn()
      times.append(time.perf_counter() - t)
    rows.append({"metric": name, "predictions": args.n, "seconds": statistics.median(times)})
  report("eval_auc", rows, ["metric", "predictions", "seconds"])


if __name__ == "__main__":
  main()
