"""Every benchmark, one after another: `python benchmarks/run_all.py [--quick]`. Each prints its
table and writes benchmarks/results/<name>.json; README.md shows the latest tables from this machine."""

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--quick", action="store_true", help="fewer models, points and repeats (a smoke run)")
  args = p.parse_args()
  runs = [["step_throughput.py"] + (["--models", "mian,din,deepfm", "--repeats", "5"] if args.quick else []),
          ["step_throughput.py", "--models", "mian", "--dtype", "bfloat16"] + (["--repeats", "5"] if args.quick else []),
          ["pipeline.py"] + (["--scale", "0.002", "--batches", "30"] if args.quick else []),
          ["scaling.py"] + (["--quick"] if args.quick else []),
          ["eval_auc.py"] + (["--n", "1000000"] if args.quick else [])]
  failed = []
  for cmd in runs:
    if subprocess.run([sys.executable, str(HERE / cmd[0]), *cmd[1:]], cwd=HERE.parent).returncode:
      failed.append(cmd[0])
  if failed:
    sys.exit(f"error: {', '.join(failed)} failed (its output is above)")


if __name__ == "__main__":
  main()
