"""What the docs are generated from: the configuration reference (every field, its default and its comment in
mian_jax/config.py, as `--print-config` shows them) and the results tables (each from its sweep's results.csv).

    python -m docs.generate      # rewrites docs/reference/config.md and every marked table of docs/*.md
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

from mian_jax import config_fields, selection, sweep
from mian_jax.config import Config


def config_reference() -> str:
  lines = [
    "# Configuration reference",
    "",
    "Every field `--set KEY=VALUE` takes, its package default and what it means (its comment in "
    "`mian_jax/config.py`; `python launch.py --experiment NAME --print-config` prints the same for an "
    "experiment, with that experiment's values). Generated from the code when the docs are built.",
    "",
  ]
  section = None
  for key, value, doc in config_fields.fields(Config()):
    head = key.split(".")[0]
    if head != section:
      section = head
      lines += ["", f"## `{head}`", "", "| key | default | description |", "|---|---|---|"]
    shown = config_fields.as_text(value)
    lines.append(
      f"| `{key}` | `{shown}` | {doc.replace('|', '&#124;')} |"
      if shown
      else f"| `{key}` | (empty) | {doc.replace('|', '&#124;')} |"
    )
  return "\n".join(lines) + "\n"


def write_config_reference(path: Path) -> None:
  text = config_reference()
  if not path.exists() or path.read_text() != text:
    path.write_text(text)


# ------------------------------------------------------------------ results tables
# A results table in a page is written between two markers that name its source, a sweep's results.csv under
# docs/results (its settings.csv beside it gives the intervals, where the sweep wrote one):
#   <!-- table: results/yelp-converged/real_table.csv -->
#   ...the table, as table_from() writes it...
#   <!-- end table -->
# `python -m docs.generate` rewrites every such table from its source; tests/test_docs.py fails on a table that
# differs from what its source gives.
DOCS = Path(__file__).resolve().parent
MARKED = re.compile(r"(<!-- table: (?P<source>\S+) -->\n)(?P<table>.*?)(<!-- end table -->)", re.S)
_NUMBERS = ("valid_auc", "auc", "gauc", "logloss", "samples_per_s", "best_epoch", "epoch")


def _trials(path: Path) -> list[dict[str, Any]]:
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  for r in rows:
    for k in _NUMBERS:
      r[k] = float(r[k]) if r.get(k) not in (None, "") else None
    for k in [k for k, v in r.items() if "." in k and v == ""]:
      del r[k]  # an override another trial has
  return rows


def _intervals(path: Path) -> dict[str, str]:
  """{setting: "+d [lo, hi]"} from the sweep's settings.csv, where it has them."""
  if not path.exists():
    return {}
  with open(path, newline="") as f:
    return {
      r["setting"]: f"{float(r['auc_minus_best']):+.4f} [{float(r['ci95_low']):+.4f}, {float(r['ci95_high']):+.4f}]"
      for r in csv.DictReader(f)
      if r.get("auc_minus_best")
    }


def _epochs(group: dict[str, Any]) -> str:
  pairs = [
    f"{r['best_epoch']:g}/{r['epoch']:g}"
    for r in sorted(group["ok"], key=lambda r: int(r.get("train.seed") or 0))
    if r.get("best_epoch") is not None and r.get("epoch") is not None
  ]
  if not pairs:
    return "-"
  return f"{pairs[0]} (all)" if len(set(pairs)) == 1 and len(pairs) > 1 else ", ".join(pairs)


def _selection_table(source: Path) -> str:
  """The table `python -m mian_jax.selection` wrote beside its results.csv (one row per trial of every data
  set: data_set, configuration, seed, valid_auc), rebuilt from that file by the same rule."""
  with open(source, newline="") as f:
    rows = [{**r, "seed": int(r["seed"]), "valid_auc": float(r["valid_auc"])} for r in csv.DictReader(f)]
  return selection.markdown(*selection.choose(rows))


def table_from(source: Path) -> str:
  """The table of a source: a selection's results.csv (its header starts with data_set, configuration) as
  `mian_jax.selection` lays it out, else one sweep's: a row per setting (mean ± std over its seeds; the best of each column in bold),
  with each setting's test AUC minus the best one's and its 95% interval when the sweep measured them."""
  with open(source, newline="") as f:
    if next(csv.reader(f), [])[:2] == ["data_set", "configuration"]:
      return _selection_table(source)
  groups = sweep.groups_over_seeds(_trials(source))
  epochs = any(r.get("best_epoch") is not None for g in groups for r in g["ok"])
  extra = {"best / stopped epoch": _epochs} if epochs else {}
  intervals = _intervals(source.with_name("settings.csv")) or None
  return "\n".join(sweep.settings_table(groups, intervals, extra, short_labels=True)) + "\n"


def with_tables(text: str) -> str:
  """The page with every marked table rewritten from its source."""
  return MARKED.sub(lambda m: m.group(1) + table_from(DOCS / m.group("source")) + m.group(4), text)


def pages() -> list[Path]:
  return sorted(DOCS.glob("*.md"))


def main() -> None:
  write_config_reference(DOCS / "reference" / "config.md")
  for page in pages():
    text = page.read_text()
    if with_tables(text) != text:
      page.write_text(with_tables(text))
      print(f"rewrote the tables of {page}")


if __name__ == "__main__":
  main()
