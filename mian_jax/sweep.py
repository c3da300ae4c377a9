"""Runs a sweep: one `launch.py` process per trial, one after another, then the summary tables.

Each trial is its own process (a crash or an error in one does not stop the others, and every trial
starts from a clean JAX runtime); a trial whose workdir holds `result.json` is finished and is not run
again, an interrupted one resumes from its checkpoints. The sweep root gets `results.csv` (one row
per trial) and, for the paper's sweeps, `<sweep>.md` / `<sweep>.csv` laid out as the paper's Table 2.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULT_KEYS = ("auc", "gauc", "logloss", "best_step", "step", "samples_per_s", "wall_s")


def trial_id(overrides: dict[str, str]) -> str:
  """Readable and stable: `name=din`, `name=mian,ibim_encoder=none`."""
  return ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in overrides.items())


def run(experiment: str, sweep: str, trials: list[dict[str, str]], root: Path, base_sets: list[str],
        fresh: bool = False) -> list[dict[str, Any]]:
  rows = []
  for i, overrides in enumerate(trials):
    tid = trial_id(overrides)
    workdir = root / tid
    done = workdir / "result.json"
    if done.exists() and not fresh:
      print(f"[{i + 1}/{len(trials)}] {tid}: finished before, not run again", flush=True)
    else:
      print(f"[{i + 1}/{len(trials)}] {tid}: training in {workdir}", flush=True)
      cmd = [sys.executable, str(ROOT / "launch.py"), "--experiment", experiment, "--workdir", str(workdir)]
      for assignment in base_sets + [f"{k}={v}" for k, v in overrides.items()]:
        cmd += ["--set", assignment]
      if fresh:
        cmd.append("--fresh")
      proc = subprocess.run(cmd, cwd=ROOT, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
      workdir.mkdir(parents=True, exist_ok=True)
      (workdir / "log.txt").write_text(proc.stdout)
      lines = proc.stdout.strip().splitlines()
      print(f"    {lines[-1] if lines else '(no output)'}", flush=True)
    row: dict[str, Any] = {"trial": tid, **overrides}
    if done.exists():
      result = json.loads(done.read_text())
      row.update({k: result.get(k) for k in RESULT_KEYS}, status="ok")
    else:
      log = (workdir / "log.txt").read_text().strip().splitlines() if (workdir / "log.txt").exists() else []
      errors = [l for l in log if l.startswith("error:")] or log[-1:] or ["no output"]
      row["status"] = f"failed: {errors[-1]}"
    rows.append(row)
  _write_csv(root / "results.csv", rows)
  return rows


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
  keys: list[str] = []
  for r in rows:
    keys += [k for k in r if k not in keys]
  with path.open("w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)


def rela_impr(auc: float, base: float) -> float:
  """DIN's RelaImpr: relative gain over the 0.5 of a random guess, in %."""
  return ((auc - 0.5) / (base - 0.5) - 1) * 100


def paper_table(root: Path, name: str, rows: list[dict[str, Any]], reference: str = "mian") -> str:
  """Table 2 of the paper: AUC / logloss (and gAUC) per model, best in bold, MIAN's gain over the best
  other model. Writes `<name>.md` and `<name>.csv` in `root`; returns the markdown."""
  ok = [r for r in rows if r["status"] == "ok"]
  label = lambda r: r["trial"].replace("name=", "").replace(",ibim_encoder=", " / encoder ")
  best = {k: (max if k != "logloss" else min)(r[k] for r in ok) for k in ("auc", "gauc", "logloss")} if ok else {}
  fmt = lambda r, k: f"**{r[k]:.4f}**" if r[k] == best[k] else f"{r[k]:.4f}"
  lines = ["| model | AUC | logloss | gAUC |", "|---|---|---|---|"]
  lines += [f"| {label(r)} | {fmt(r, 'auc')} | {fmt(r, 'logloss')} | {fmt(r, 'gauc')} |" for r in ok]
  lines += [f"| {label(r)} | {r['status']} | | |" for r in rows if r["status"] != "ok"]
  ref = [r for r in ok if r["trial"] == f"name={reference}"]
  others = [r for r in ok if r["trial"] != f"name={reference}"]
  if ref and others:
    top = max(others, key=lambda r: r["auc"])
    lines.append("")
    lines.append(f"{reference} vs the best other model ({label(top)}): AUC {ref[0]['auc'] - top['auc']:+.4f} "
                 f"(RelaImpr {rela_impr(ref[0]['auc'], top['auc']):+.2f}%), logloss "
                 f"{ref[0]['logloss'] - top['logloss']:+.4f}")
  text = "\n".join(lines) + "\n"
  (root / f"{name}.md").write_text(text)
  _write_csv(root / f"{name}.csv", [{"model": label(r), **{k: r.get(k) for k in ("auc", "logloss", "gauc", "status")}}
                                    for r in rows])
  return text
