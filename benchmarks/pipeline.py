"""Benchmark 3: the input path alone and against the step, on the commercial data set's ArrayRecord shards.

    python -m benchmarks.pipeline [--scale 0.01] [--batch 8192] [--batches 50] [--threads 1,2]
                                  [--models mian] [--steps 100] [--eval-batch 8192]

Rows, one table (pipeline.json):
- train input, W threads: training batches per second from the shards (read, decode, the in-batch order,
  the OOV check) with W decoding threads, and `vs_one`, its ratio to one thread's rate (the scaling
  target: >= 0.8 W up to the host's cores);
- eval input, W threads: evaluation rows per second (every row of the test split, in order);
- MODEL step alone: the jitted train step on batches already on the device (the input path's own
  batches, placed once);
- MODEL input + step: the trainer's path, batches decoded by the default threads and placed on the
  devices data.device_prefetch batches ahead, and `vs_step`, its ratio to the step alone (target >= 0.9);
- MODEL evaluation: the eval step over the test split, input included (rows per second).
Every rate is a median of `--repeats` timed runs made in this one sitting (first batches and
compilation apart).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from benchmarks.common import jax, report, time_step
from mian_jax import data
from mian_jax.config import Config, DataConfig, ModelConfig, TrainConfig
from mian_jax.data import pipeline
from mian_jax.train import partition
from mian_jax.train.run import Run


def _median_rate(measure, repeats: int) -> float:
  return statistics.median(measure() for _ in range(repeats))


def train_input_rate(src, rows: int, threads: int, batches: int) -> float:
  it = pipeline.train_iterator(src, batch_per_process=rows, seed=0, max_len=src.schema.max_len, threads=threads,
                               prefetch=max(4, threads))
  for _ in range(max(3, threads)):  # start-up: the threads' first batches
    next(it)
  t = time.perf_counter()
  for _ in range(batches):
    next(it)
  return rows * batches / (time.perf_counter() - t)


def eval_input_rate(src, rows: int, threads: int) -> float:
  t = time.perf_counter()
  _, it = pipeline.eval_batches(src, "test", rows_per_process=rows, max_len=src.schema.max_len, threads=threads)
  total = sum(len(b["label"]) for b in it)
  return total / (time.perf_counter() - t)


def assemble(model: str, src, compute_dtype: str) -> Run:
  config = Config(model=ModelConfig(name=model), train=TrainConfig(learning_rate=1e-3, compute_dtype=compute_dtype))
  mesh = partition.make_mesh(jax.devices()[:1])
  return Run.assemble(config, src.schema, mesh, total_steps=1000)


def model_rows(model: str, src, batch: int, steps: int, eval_batch: int, compute_dtype: str) -> list[dict]:
  run = assemble(model, src, compute_dtype)
  place = lambda b: partition.to_global(b, run.mesh)
  it = pipeline.train_iterator(src, batch_per_process=batch, seed=0, max_len=src.schema.max_len, place=place)
  fixed = [next(it) for _ in range(3)]
  state = run.init_state(seed=0)
  alone, state = time_step(run.train_step, state, fixed, repeats=20)
  for _ in range(10):  # the placing thread fills up while these run
    state, metrics = run.train_step(state, next(it))
  jax.block_until_ready(metrics)
  t = time.perf_counter()
  for _ in range(steps):
    state, metrics = run.train_step(state, next(it))
  jax.block_until_ready(metrics)
  end_to_end = batch * steps / (time.perf_counter() - t)
  it.close()
  step_rate = batch / alone["median_s"]
  params = state.params
  _, first = pipeline.eval_batches(src, "test", rows_per_process=eval_batch, max_len=src.schema.max_len, place=place)
  jax.block_until_ready(run.eval_step(params, next(first)))  # compiled before the timed pass
  first.close()
  t = time.perf_counter()
  _, batches = pipeline.eval_batches(src, "test", rows_per_process=eval_batch, max_len=src.schema.max_len,
                                     place=place)
  eval_step = run.eval_step
  outs = [eval_step(params, b) for b in batches]
  jax.block_until_ready(outs)
  eval_rate = src.rows("test") / (time.perf_counter() - t)
  return [{"what": f"{model} step alone", "kind": "step", "model": model, "samples_per_s": step_rate},
          {"what": f"{model} input + step", "kind": "end_to_end", "model": model, "samples_per_s": end_to_end,
           "vs_step": end_to_end / step_rate},
          {"what": f"{model} evaluation (input + eval step)", "kind": "evaluation", "model": model,
           "rows_per_s": eval_rate}]


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--scale", type=float, default=0.01)
  p.add_argument("--batch", type=int, default=8192)
  p.add_argument("--batches", type=int, default=50, help="timed batches per input measurement")
  p.add_argument("--threads", default="", help="comma-separated thread counts (default: 1, 2, 4, ... up to the cores)")
  p.add_argument("--models", default="mian", help="comma-separated models for the step rows ('' = none)")
  p.add_argument("--steps", type=int, default=100, help="timed steps of input + step")
  p.add_argument("--eval-batch", type=int, default=8192)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--dtype", default="float32")
  args = p.parse_args(argv)
  cores = os.cpu_count() or 1
  threads = [int(t) for t in args.threads.split(",")] if args.threads else \
      sorted({1 << i for i in range(cores.bit_length()) if 1 << i <= cores} | {cores})
  root = os.environ.get("MIAN_JAX_BENCH_DATA") or tempfile.mkdtemp(prefix="mian_jax_bench_")
  src = data.open_source(DataConfig(source="commercial", dir=root, scale=args.scale))
  rows = []
  for w in threads:
    rate = _median_rate(lambda: train_input_rate(src, args.batch, w, args.batches), args.repeats)
    rows.append({"what": f"train input, {w} threads", "kind": "train_input", "threads": w, "samples_per_s": rate})
  for w in threads:
    rate = _median_rate(lambda: eval_input_rate(src, args.eval_batch, w), args.repeats)
    rows.append({"what": f"eval input, {w} threads", "kind": "eval_input", "threads": w, "rows_per_s": rate})
  for kind, key in (("train_input", "samples_per_s"), ("eval_input", "rows_per_s")):
    one = next(r[key] for r in rows if r["kind"] == kind)
    for r in rows:
      if r["kind"] == kind:
        r["vs_one"] = r[key] / one
        r["target_vs_one"] = 0.8 * r["threads"]
  for model in filter(None, args.models.split(",")):
    rows += model_rows(model, src, args.batch, args.steps, args.eval_batch, args.dtype)
  report("pipeline", rows, ["what", "samples_per_s", "rows_per_s", "vs_one", "target_vs_one", "vs_step"],
         {"batch": args.batch, "scale": args.scale, "eval_batch": args.eval_batch, "cores": cores,
          "split_rows": {"train": src.rows("train"), "test": src.rows("test")}, "dtype": args.dtype})


if __name__ == "__main__":
  main()
