"""Benchmark 3: the input path alone and against the step, on the commercial data set's ArrayRecord shards.

    python -m benchmarks.pipeline [--scale 0.01] [--batch 8192] [--batches 50] [--threads 1,2]
                                  [--models mian] [--steps 100] [--eval-batch 8192] [--per-call 1,4,16]
                                  [--cli lr,deepfm] [--cli-steps 60]

Rows, one table (pipeline.json):
- train input, W threads: training batches per second from the shards (read, decode, the in-batch order,
  the OOV check) with W decoding threads, and `vs_one`, its ratio to one thread's rate (the scaling
  target: >= 0.8 W up to the host's cores);
- eval input, W threads: evaluation rows per second (every row of the test split, in order);
- MODEL step alone: the jitted train step on batches already on the device (the input path's own
  batches, placed once);
- MODEL input + step, PLACEMENT, K per call: the trainer's loop body (`take`, `Run.train_call`) with
  data.placement=host (batches decoded by the default threads, placed data.device_prefetch ahead) or device
  (the split held on the device, batches gathered inside the step) and train.steps_per_call=K, with
  `vs_step`, its ratio to the step alone (target >= 0.9);
- load the train split onto the device: the seconds data.placement=device takes before the first step;
- MODEL evaluation, PLACEMENT: `Run.evaluate` over the test split (input, eval step, metrics; rows/s);
- launch.py ... --model M (--cli M): the main job with its defaults at --batch for --cli-steps steps, its
  result.json samples/s (training steps only), with `vs_step` against M's step alone measured in this run.
Every rate is a median of `--repeats` timed runs made in this one sitting (first batches and
compilation apart).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import jax, report, time_step
from mian_jax import data
from mian_jax.config import Config, DataConfig, ModelConfig, TrainConfig
from mian_jax.data import pipeline
from mian_jax.train import partition
from mian_jax.train.run import Run

ROOT = Path(__file__).resolve().parents[1]


def _median_rate(measure, repeats: int) -> float:
  return statistics.median(measure() for _ in range(repeats))


def train_input_rate(src, rows: int, threads: int, batches: int) -> float:
  it = pipeline.train_iterator(
    src, batch_per_process=rows, seed=0, max_len=src.schema.max_len, threads=threads, prefetch=max(4, threads)
  )
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


def assemble(model: str, src, compute_dtype: str, placement: str = "host", batch: int = 8192) -> Run:
  """The trainer's Run for `model` on `src`, one device, with the placement given (not chosen by size)."""
  config = Config(
    model=ModelConfig(name=model),
    train=TrainConfig(learning_rate=1e-3, compute_dtype=compute_dtype, batch_size=batch),
    data=DataConfig(source="commercial", max_len=src.schema.max_len, placement=placement),
  )
  mesh = partition.make_mesh(jax.devices()[:1])
  run = Run.assemble(config, src.schema, mesh, total_steps=100_000)
  return dataclasses.replace(run, src=src, placement=placement)


def trained_rate(run: Run, batch: int, steps: int, per_call: int) -> tuple[float, Any]:
  """Samples per second of the trainer's loop body (take, train_call) over `steps` steps, `per_call` steps a
  call, after two untimed calls (compilation; under data.placement=device the split is loaded before)."""
  it = run.train_iterator(0, on_devices=True)
  state = run.init_state(seed=0)
  for _ in range(2):
    state, metrics = run.train_call(state, it.take(per_call))
  jax.block_until_ready(metrics)
  calls = max(1, steps // per_call)
  t = time.perf_counter()
  for _ in range(calls):
    state, metrics = run.train_call(state, it.take(per_call))
  jax.block_until_ready(metrics)
  rate = batch * calls * per_call / (time.perf_counter() - t)
  it.close()
  return rate, state


def model_rows(
  model: str, src, batch: int, steps: int, eval_batch: int, compute_dtype: str, per_call: list[int]
) -> list[dict]:
  run = assemble(model, src, compute_dtype, batch=batch)
  place = lambda b: partition.to_global(b, run.mesh)
  it = pipeline.train_iterator(src, batch_per_process=batch, seed=0, max_len=src.schema.max_len, place=place)
  fixed = [next(it) for _ in range(3)]
  it.close()
  alone, state = time_step(run.train_step, run.init_state(seed=0), fixed, repeats=20)
  step_rate = batch / alone["median_s"]
  rows = [{"what": f"{model} step alone", "kind": "step", "model": model, "samples_per_s": step_rate}]
  for placement in ("host", "device"):
    placed = assemble(model, src, compute_dtype, placement, batch)
    if placement == "device":
      t = time.perf_counter()
      held, _ = placed.resident("train")
      rows.append(
        {
          "what": f"load the train split onto the device ({held.rows:,} rows)",
          "kind": "load",
          "seconds": time.perf_counter() - t,
        }
      )
    for k in per_call:
      rate, state = trained_rate(placed, batch, steps, k)
      rows.append(
        {
          "what": f"{model} input + step, {placement}, {k} per call",
          "kind": "end_to_end",
          "model": model,
          "placement": placement,
          "steps_per_call": k,
          "samples_per_s": rate,
          "vs_step": rate / step_rate,
        }
      )
    placed.config.train.eval_batch_size = eval_batch
    placed.evaluate(state.params, "test")  # compiled (and, on the device, loaded) before the timed pass
    t = time.perf_counter()
    placed.evaluate(state.params, "test")
    rows.append(
      {
        "what": f"{model} evaluation, {placement} (input + eval step + metrics)",
        "kind": "evaluation",
        "model": model,
        "placement": placement,
        "rows_per_s": src.rows("test") / (time.perf_counter() - t),
      }
    )
  return rows


def cli_rows(
  models: list[str], batch: int, steps: int, scale: float, root: str, step_rates: dict[str, float]
) -> list[dict]:
  """`launch.py --experiment commercial --model M` with the defaults at `batch` for `steps` steps: its
  result.json's samples/s (training steps only), against the step alone measured in this run."""
  rows = []
  for model in models:
    with tempfile.TemporaryDirectory(prefix="mian_jax_cli_") as workdir:
      cmd = [
        sys.executable,
        str(ROOT / "launch.py"),
        "--experiment",
        "commercial",
        "--model",
        model,
        "--workdir",
        workdir,
        "--set",
        f"data.dir={root}",
        "--set",
        f"data.scale={scale}",
        "--set",
        f"train.batch_size={batch}",
        "--set",
        f"train.steps={steps}",
        "--set",
        f"train.eval_every={steps}",
      ]
      done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
      if done.returncode:
        raise SystemExit(f"error: {' '.join(cmd)} failed: {done.stderr.strip().splitlines()[-1:]}")
      rate = json.loads((Path(workdir) / "result.json").read_text())["samples_per_s"]
      placement = next((line for line in done.stdout.splitlines() if line.startswith("data.placement")), "host")
    rows.append(
      {
        "what": f"launch.py --experiment commercial --model {model} ({placement.split(' (')[0]})",
        "kind": "cli",
        "model": model,
        "samples_per_s": rate,
        "vs_step": rate / step_rates[model] if model in step_rates else None,
      }
    )
  return rows


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
  p.add_argument("--per-call", default="1,4,16", help="comma-separated train.steps_per_call values to time")
  p.add_argument(
    "--cli", default="", help="comma-separated models also run through launch.py (their step alone is measured too)"
  )
  p.add_argument("--cli-steps", type=int, default=60)
  args = p.parse_args(argv)
  cores = os.cpu_count() or 1
  threads = (
    [int(t) for t in args.threads.split(",")]
    if args.threads
    else sorted({1 << i for i in range(cores.bit_length()) if 1 << i <= cores} | {cores})
  )
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
  per_call = [int(k) for k in args.per_call.split(",")]
  cli = list(filter(None, args.cli.split(",")))
  for model in dict.fromkeys(list(filter(None, args.models.split(","))) + cli):
    rows += model_rows(model, src, args.batch, args.steps, args.eval_batch, args.dtype, per_call)
  steps_alone = {r["model"]: r["samples_per_s"] for r in rows if r["kind"] == "step"}
  rows += cli_rows(cli, args.batch, args.cli_steps, args.scale, root, steps_alone)
  report(
    "pipeline",
    rows,
    ["what", "samples_per_s", "rows_per_s", "seconds", "vs_one", "target_vs_one", "vs_step"],
    {
      "batch": args.batch,
      "scale": args.scale,
      "eval_batch": args.eval_batch,
      "cores": cores,
      "split_rows": {"train": src.rows("train"), "test": src.rows("test")},
      "dtype": args.dtype,
    },
  )


if __name__ == "__main__":
  main()
