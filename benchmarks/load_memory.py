"""Benchmark: what data.placement=device's load of the commercial training split costs in time and host memory.

    python -m benchmarks.load_memory [--scales 0.01,0.03,0.1]

Each scale runs in a fresh process: the data set is opened (generated first when it is not cached under
$MIAN_JAX_BENCH_DATA or a temporary folder), then its training split is loaded (`resident.load`: the decoded
columns on the host) and placed on the first device (`on_device.place`), and the host copy dropped. Rows: the
split's rows, its columns' MiB, the load's seconds, and the process's peak resident memory above what it held
before the load, in MiB and as a multiple of the columns. On a CPU the device copy is host memory too, so
the peak there counts the columns twice (the host's decoded copy and the device's); on an accelerator only
the host's copy and one column being joined stay on the host.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from benchmarks.common import jax, report


def one(scale: float, root: str) -> dict:
  from mian_jax import data
  from mian_jax.config import DataConfig
  from mian_jax.data import resident
  from mian_jax.train import on_device, partition

  src = data.open_source(DataConfig(source="commercial", dir=root, scale=scale))
  before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  t = time.perf_counter()
  held = resident.load(src, "train", range(len(src.blocks("train"))), max_len=src.schema.max_len)
  store = on_device.place(held, partition.make_mesh(jax.devices()[:1]))
  jax.block_until_ready(store)
  seconds = time.perf_counter() - t
  columns = held.nbytes()
  held.columns = {}
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
  return {
    "what": f"scale {scale}: {held.rows:,} training rows",
    "scale": scale,
    "rows": held.rows,
    "columns_mib": columns / 2**20,
    "seconds": seconds,
    "peak_above_mib": peak / 2**20,
    "peak_vs_columns": peak / columns,
    "backend": jax.default_backend(),
  }


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--scales", default="0.01,0.03,0.1")
  p.add_argument("--one", type=float, default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  root = os.environ.get("MIAN_JAX_BENCH_DATA") or tempfile.mkdtemp(prefix="mian_jax_bench_")
  if args.one is not None:
    print(json.dumps(one(args.one, root)))
    return
  rows = []
  for scale in (float(s) for s in args.scales.split(",")):
    done = subprocess.run(
      [sys.executable, "-m", "benchmarks.load_memory", "--one", str(scale)],
      capture_output=True,
      text=True,
      env={**os.environ, "MIAN_JAX_BENCH_DATA": root},
    )
    if done.returncode:
      raise SystemExit(f"error: scale {scale}: {done.stderr.strip().splitlines()[-1:]}")
    rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
  report("load_memory", rows, ["what", "columns_mib", "seconds", "peak_above_mib", "peak_vs_columns"])


if __name__ == "__main__":
  main()
