"""Every benchmark, one after another: `python -m benchmarks.run_all [--quick]` from the repository root. Each
prints its table and writes benchmarks/results/<name>.json; README.md shows the latest tables from this machine."""

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--quick", action="store_true", help="fewer models, points and repeats (a smoke run)")
  args = p.parse_args()
  runs = [
    ["step_throughput"] + (["--models", "mian,din,deepfm", "--repeats", "5"] if args.quick else []),
    ["step_throughput", "--models", "mian", "--dtype", "bfloat16"] + (["--repeats", "5"] if args.quick else []),
    ["pipeline", "--batch", "1024", "--steps", "30"]
    + (["--scale", "0.002", "--batches", "30", "--threads", "1"] if args.quick else []),
    ["scaling"] + (["--quick"] if args.quick else []),
    ["eval_auc"] + (["--n", "1000000"] if args.quick else []),
  ]
  failed = []
  for cmd in runs:
    if subprocess.run([sys.executable, "-m", f"benchmarks.{cmd[0]}", *cmd[1:]], cwd=ROOT).returncode:
      failed.append(cmd[0])
  if failed:
    sys.exit(f"error: {', '.join(failed)} failed (its output is above)")


if __name__ == "__main__":
  main()
