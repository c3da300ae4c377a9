"""The choice of MIAN's default configuration from sweep results on validation splits.

    python -m mian_jax.selection --out docs/results/mian-default \\
        yelp=docs/results/yelp-converged/real_table.csv:previous ... commercial=ROOT/results.csv:current

Each source is DATA_SET=results.csv:BASE, BASE naming the MIAN defaults the sweep ran under (`previous`: the
paper's Pre-LN IBIM without auxiliary loss or product; `current`: config.ModelConfig's). A trial's
configuration is its base with its `model.*` overrides applied; MIAN trials only (`model.name` mian or
absent). Trials of one configuration on one data set are its seeds (the same seed in two sources counts once).

The rule: a configuration's score is the mean over the data sets of its validation AUC (the mean over seeds)
minus the reference's (the previous default) on the same data set; the default is the configuration of the
highest score among those measured with 3 seeds on every data set. Each data set weighs the same, whatever
its size or AUC level; the differences, not the AUCs, are averaged, so a data set with a high AUC does not
count for more. results.md shows each configuration's validation AUC per data set, its score and its mean
rank (a second view of the same numbers); results.csv holds every trial used.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path
from typing import Any

import numpy as np

from mian_jax import files

OPTIONS = ("ibim_encoder", "ibim_aux_loss", "candidate_product")  # what the candidates differ in
BASES = {
  "previous": {"ibim_encoder": "pre_ln", "ibim_aux_loss": "false", "candidate_product": "none"},
  "current": {"ibim_encoder": "gru", "ibim_aux_loss": "true", "candidate_product": "history"},
}
REFERENCE = "previous default"
SEEDS = 3


def label(options: dict[str, str]) -> str:
  for name, base in BASES.items():
    if options == base:
      return f"{name} default"
  return ", ".join(f"{k}={v}" for k, v in sorted(options.items()))


def trials(data_set: str, path: Path, base: str) -> list[dict[str, Any]]:
  """The MIAN trials of one results.csv with their configuration (base + overrides) and validation AUC."""
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  out = []
  for r in rows:
    if r.get("status") != "ok" or r.get("model.name", "mian") not in ("", "mian") or not r.get("valid_auc"):
      continue
    options = dict(BASES[base])
    options.update({k.split(".", 1)[1]: v for k, v in r.items() if k.startswith("model.") and k != "model.name" and v})
    out.append(
      {
        "data_set": data_set,
        "configuration": label(options),
        "seed": int(r.get("train.seed") or 0),
        "valid_auc": float(r["valid_auc"]),
        "auc": float(r["auc"]),
        "source": str(path),
        "trial": r["trial"],
      }
    )
  return out


def choose(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
  """(one row per configuration: valid AUC per data set, score, mean rank, chosen; the data sets)."""
  data_sets = list(dict.fromkeys(r["data_set"] for r in rows))
  by: dict[tuple[str, str], dict[int, float]] = {}
  for r in rows:
    by.setdefault((r["configuration"], r["data_set"]), {})[r["seed"]] = r["valid_auc"]
  configs = list(dict.fromkeys(r["configuration"] for r in rows))
  mean = {k: float(np.mean(list(v.values()))) for k, v in by.items()}
  std = {k: float(np.std(list(v.values()), ddof=1)) if len(v) > 1 else None for k, v in by.items()}
  complete = [c for c in configs if all(len(by.get((c, d), {})) >= SEEDS for d in data_sets)]
  table = []
  for c in configs:
    row: dict[str, Any] = {"configuration": c, "complete": c in complete}
    for d in data_sets:
      row[d] = (mean.get((c, d)), std.get((c, d)), len(by.get((c, d), {})))
    if c in complete and REFERENCE in complete:
      row["score"] = float(np.mean([mean[(c, d)] - mean[(REFERENCE, d)] for d in data_sets]))
      row["rank"] = float(np.mean([1 + sum(mean[(o, d)] > mean[(c, d)] for o in complete) for d in data_sets]))
    table.append(row)
  scored = [r for r in table if "score" in r]
  if scored:
    max(scored, key=lambda r: r["score"])["chosen"] = True
  return table, data_sets


def markdown(table: list[dict[str, Any]], data_sets: list[str]) -> str:
  cell = lambda m: (
    "-"
    if m[0] is None
    else f"{m[0]:.4f}" + (f" ± {m[1]:.4f}" if m[1] is not None else "") + (f" (n={m[2]})" if m[2] != SEEDS else "")
  )
  lines = [
    "| configuration | " + " | ".join(f"{d} valid AUC" for d in data_sets) + " | score | mean rank | |",
    "|---|" + "---|" * len(data_sets) + "---|---|---|",
  ]
  for r in table:
    if any(r[d][0] is None for d in data_sets):  # measured on some data sets only (results.csv has them)
      continue
    score = f"{r['score']:+.4f}" if "score" in r else "-"
    rank = f"{r['rank']:.2f}" if "rank" in r else "-"
    lines.append(
      f"| {r['configuration']} | "
      + " | ".join(cell(r[d]) for d in data_sets)
      + f" | {score} | {rank} | {'**chosen**' if r.get('chosen') else ''} |"
    )
  return "\n".join(lines) + "\n"


def _page(table: list[dict[str, Any]], data_sets: list[str], sources: list[str]) -> str:
  bases = "; ".join(
    f"{name} default = " + ", ".join(f"{k}={v}" for k, v in base.items()) for name, base in BASES.items()
  )
  return (
    "# MIAN's default, chosen on validation\n\n"
    "Written by `python -m mian_jax.selection` (its docstring has the rule): a configuration's score is the mean "
    "over the data sets of its validation AUC minus the previous default's; the highest score among the "
    f"configurations measured with {SEEDS} seeds on every data set is chosen. Validation AUC: mean ± std over "
    "seeds 0, 1, 2; mean rank: its rank among these rows, averaged over the data sets.\n\n"
    f"{bases} (other MIAN options at the package defaults: target pooling, summed e_b, Dice MLP).\n\n"
    + markdown(table, data_sets)
    + "\nSources (DATA_SET=results.csv:the defaults it ran under), every trial in results.csv:\n\n"
    + "".join(f"- `{s}`\n" for s in sources)
  )


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("sources", nargs="+", help="DATA_SET=results.csv:BASE (BASE: previous | current)")
  parser.add_argument("--out", type=Path, required=True, help="folder for results.md and results.csv")
  args = parser.parse_args(argv)
  rows: list[dict[str, Any]] = []
  for source in args.sources:
    data_set, _, rest = source.partition("=")
    path, _, base = rest.rpartition(":")
    if not data_set or not path or base not in BASES:
      print(
        f"error: {source!r}: expected DATA_SET=results.csv:BASE with BASE one of {', '.join(BASES)}", file=sys.stderr
      )
      return 2
    if not Path(path).is_file():
      print(f"error: {path}: no such results.csv", file=sys.stderr)
      return 2
    rows += trials(data_set, Path(path), base)
  seen: set[tuple[str, str, int]] = set()
  unique = []
  for r in rows:  # a trial reused by two sweeps of the same root appears in both results.csv
    key = (r["data_set"], r["configuration"], r["seed"])
    if key not in seen:
      seen.add(key)
      unique.append(r)
  table, data_sets = choose(unique)
  args.out.mkdir(parents=True, exist_ok=True)
  files.write_text(args.out / "results.md", _page(table, data_sets, args.sources))
  out = io.StringIO(newline="")
  w = csv.DictWriter(out, fieldnames=list(unique[0]))
  w.writeheader()
  w.writerows(unique)
  files.write_text(args.out / "results.csv", out.getvalue())
  print(markdown(table, data_sets), end="")
  return 0


if __name__ == "__main__":
  sys.exit(main())
