"""Benchmark 4: MIAN's step time vs the user-vocabulary size (20k -> 2.2M rows) for dense `adam` and
row-sparse `lazy_adam`, vs history length (25 -> 200) and vs batch size (256 -> 8192).

    python -m benchmarks.scaling [--model mian] [--quick]
"""

import argparse

from benchmarks.common import batch, partition, report, schema, time_step, train_step


def measure(model: str, users: int, history: int, rows: int, opt: str, repeats: int) -> dict:
  s = schema(users=users, history=history)
  step, state, mesh = train_step(model, s, embedding_optimizer=opt)
  batches = [partition.to_global(batch(s, rows, seed=i), mesh) for i in range(3)]
  t, _ = time_step(step, state, batches, repeats=repeats)
  return {
    "users": users,
    "history": history,
    "batch": rows,
    "embedding_optimizer": opt,
    "step_ms": 1e3 * t["median_s"],
    "samples_per_s": rows / t["median_s"],
  }


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--model", default="mian")
  p.add_argument("--quick", action="store_true", help="fewer points and repeats")
  args = p.parse_args(argv)
  reps = 5 if args.quick else 10
  vocab = [20_000, 200_000, 2_200_000]
  rows = [measure(args.model, u, 50, 1024, opt, reps) for opt in ("adam", "lazy_adam") for u in vocab]
  base = {r["embedding_optimizer"]: r["step_ms"] for r in rows if r["users"] == vocab[0]}
  for r in rows:
    r["vs_20k"] = r["step_ms"] / base[r["embedding_optimizer"]]
  report("scaling_vocabulary", rows, ["embedding_optimizer", "users", "step_ms", "samples_per_s", "vs_20k"])
  hist = [
    measure(args.model, 20_000, t, 1024, "lazy_adam", reps)
    for t in ((25, 50, 100) if args.quick else (25, 50, 100, 200))
  ]
  report("scaling_history", hist, ["history", "step_ms", "samples_per_s"])
  sizes = (256, 1024, 4096) if args.quick else (256, 1024, 4096, 8192)
  bs = [measure(args.model, 20_000, 50, b, "lazy_adam", reps) for b in sizes]
  report("scaling_batch", bs, ["batch", "step_ms", "samples_per_s"])


if __name__ == "__main__":
  main()
