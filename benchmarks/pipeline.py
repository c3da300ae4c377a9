"""Benchmark 3: the input pipeline alone (grain from ArrayRecord block shards through decode and batch,
for 0, 1, 2 worker processes) and end to end (pipeline + MIAN step) against the step alone.

    python -m benchmarks.pipeline [--scale 0.01] [--batch 1024]
"""

import argparse
import tempfile
import time

from benchmarks.common import jax, partition, report, time_step, train_step
from mian_jax import data
from mian_jax.config import DataConfig
from mian_jax.data import pipeline


def pipeline_rate(src, rows: int, workers: int, batches: int) -> float:
  it = pipeline.train_iterator(src, batch_per_process=rows, seed=0, max_len=src.schema.max_len, workers=workers)
  for _ in range(5):  # start-up (worker processes, first reads)
    next(it)
  t = time.perf_counter()
  for _ in range(batches):
    next(it)
  return rows * batches / (time.perf_counter() - t)


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--scale", type=float, default=0.01)
  p.add_argument("--batch", type=int, default=1024)
  p.add_argument("--batches", type=int, default=200)
  p.add_argument("--model", default="mian")
  args = p.parse_args(argv)
  root = tempfile.mkdtemp(prefix="mian_jax_bench_")
  src = data.open_source(DataConfig(source="commercial", dir=root, scale=args.scale))
  rows = [{"what": f"pipeline alone, {w} workers", "samples_per_s": pipeline_rate(src, args.batch, w, args.batches)}
          for w in (0, 1, 2)]
  step, state, mesh = train_step(args.model, src.schema)
  it = pipeline.train_iterator(src, batch_per_process=args.batch, seed=0, max_len=src.schema.max_len)
  fixed = [partition.to_global(next(it), mesh) for _ in range(3)]
  alone, state = time_step(step, state, fixed, repeats=20)
  state, metrics = step(state, fixed[0])
  n = 30
  t = time.perf_counter()
  for _ in range(n):
    state, metrics = step(state, partition.to_global(next(it), mesh))
  jax.block_until_ready(metrics)
  end_to_end = args.batch * n / (time.perf_counter() - t)
  step_rate = args.batch / alone["median_s"]
  rows.append({"what": f"{args.model} step alone", "samples_per_s": step_rate})
  rows.append({"what": f"{args.model} pipeline + step", "samples_per_s": end_to_end})
  for r in rows:
    r["vs_step"] = r["samples_per_s"] / step_rate
  report("pipeline", rows, ["what", "samples_per_s", "vs_step"], {"batch": args.batch, "scale": args.scale})


if __name__ == "__main__":
  main()
