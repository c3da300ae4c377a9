"""One markdown table from what benchmarks/accelerator.sh wrote into DIR: the train step alone per model
(float32 and bfloat16), the input path alone, input + step per model, the launch.py run, and the GPU
utilisation of each phase. Writes DIR/table.md and prints it.

    python -m benchmarks.accelerator_table DIR

A file a phase did not write gives its rows as "missing (phase failed)", with the phase's exit status from
summary.json when there is one. Only the standard library: it runs even where JAX does not import.
"""

from __future__ import annotations

import json
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

# The phases' models when summary.json cannot say (the accelerator run's defaults).
DEFAULT_MODELS = {
  "step": ["mian", "mian_paper", "din", "dien", "deepfm"],
  "step_bf16": ["mian", "mian_paper", "mian_paper:cudnn", "dien"],
  "pipeline": ["mian", "din", "deepfm"],
}
SAMPLED = ("step", "step_bf16", "scatter", "profile", "pipeline", "end_to_end")


def read_json(path: Path) -> Any:
  """The parsed file, or None when it is absent or unreadable (a phase killed mid-write)."""
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def rows_of(doc: Any) -> list[dict[str, Any]]:
  rows = doc.get("rows") if isinstance(doc, dict) else None
  return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def number(v: Any) -> float | None:
  return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def fmt_rate(v: Any, unit: str = "samples/s") -> str | None:
  v = number(v)
  return None if v is None else f"{v:,.0f} {unit}"


def threads(n: Any) -> str:
  return f"{n} thread" if n == 1 else f"{n} threads"


def fmt_ratio(v: Any) -> str | None:
  v = number(v)
  return None if v is None else f"{v:.2f}x"


class Phases:
  """summary.json: each phase's command (for its --models) and exit status."""

  def __init__(self, out: Path):
    doc = read_json(out / "summary.json")
    phases = doc.get("phases", []) if isinstance(doc, dict) else []
    self.by_name = {p.get("phase"): p for p in phases if isinstance(p, dict)}

  def models(self, name: str) -> list[str]:
    try:
      words = shlex.split(self.by_name.get(name, {}).get("command") or "")
    except ValueError:
      words = []
    if "--models" in words[:-1]:
      return [m for m in words[words.index("--models") + 1].split(",") if m]
    return DEFAULT_MODELS.get(name, [])

  def missing(self, name: str) -> str:
    p = self.by_name.get(name)
    status = p.get("exit") if p else None
    if status in (124, 137):
      return f"missing (phase failed: timed out after {p.get('seconds')} s)"
    if isinstance(status, int) and status != 0:
      return f"missing (phase failed: exit {status})"
    return "missing (phase failed)"


def gpu_samples(path: Path) -> list[tuple[float, float]] | None:
  """(utilisation %, memory MiB) per sample of the busiest GPU in nvidia-smi's csv, None without the file.
  Lines are `index, util, memory` or `util, memory`; "[N/A]" values are skipped."""
  try:
    lines = path.read_text().splitlines()
  except OSError:
    return None
  by_gpu: dict[str, list[tuple[float, float]]] = {}
  for line in lines:
    parts = [p.strip() for p in line.split(",")]
    if len(parts) == 2:
      parts = ["0"] + parts
    if len(parts) != 3:
      continue
    try:
      by_gpu.setdefault(parts[0], []).append((float(parts[1]), float(parts[2])))
    except ValueError:
      continue
  if not by_gpu:
    return []
  return max(by_gpu.values(), key=lambda s: statistics.median(u for u, _ in s))


def build(out: Path) -> list[tuple[str, str, str]]:
  """(phase, what, value) rows."""
  phases = Phases(out)
  rows: list[tuple[str, str, str]] = []

  devices = read_json(out / "devices.json")
  if isinstance(devices, dict):
    rows.append(
      (
        "devices",
        "backend, device",
        f"{devices.get('backend')}, {devices.get('count')} x {devices.get('kind')} (JAX {devices.get('jax')})",
      )
    )
  else:
    rows.append(("devices", "backend, device", phases.missing("devices")))

  for phase, file, label in (
    ("step", "step_throughput_float32.json", "float32"),
    ("step_bf16", "step_throughput_bfloat16.json", "bfloat16"),
  ):
    doc = read_json(out / phase / file)
    by_model = {r.get("model"): r for r in rows_of(doc)}
    batch = f", batch {doc['batch']}" if isinstance(doc, dict) and "batch" in doc else ""
    models = phases.models(phase) + [m for m in by_model if m not in phases.models(phase)]
    for m in models:
      value = fmt_rate(by_model.get(m, {}).get("samples_per_s"))
      rows.append((phase, f"{m} step alone, {label}{batch}", value or phases.missing(phase)))

  for folder, label in (("scatter", "native f32 atomic"), ("scatter_cas", "CAS-loop atomic")):
    lookups = rows_of(read_json(out / folder / "embedding_lookup.json"))
    phase = "scatter"  # both runs are the scatter phase's
    if not lookups:
      rows.append((phase, f"embedding lookup, {label}", phases.missing(phase)))
    for r in lookups:
      ms, hot = number(r.get("ms")), number(r.get("one_hot_ms"))
      value = "n/a" if ms is None else f"{ms:.3f} ms" + ("" if hot is None else f", one-hot {hot:.3f} ms")
      rows.append((phase, f"{r.get('what')}, {label}", value))

  for folder in sorted(out.glob("profile_*"), key=lambda p: int(p.name.split("_")[1]) if p.name[8:].isdigit() else 0):
    doc = read_json(folder / "profile_mian.json")
    if not isinstance(doc, dict):
      rows.append(("profile", f"mian, batch {folder.name[8:]}", phases.missing("profile")))
      continue
    ms, top = number(doc.get("op_ms_per_step")), rows_of(doc)[:3]
    kernels = "; ".join(f"{r.get('op')} {100 * (number(r.get('share')) or 0):.1f}% ({r.get('from')})" for r in top)
    step = "n/a" if ms is None else f"{ms:.2f} ms of kernels per step"
    rows.append(("profile", f"mian, batch {doc.get('batch')}", f"{step}; top: {kernels or 'n/a'}"))
  if not any(out.glob("profile_*")):
    rows.append(("profile", "mian, batch 8192 and 65536", phases.missing("profile")))

  pipe = rows_of(read_json(out / "pipeline" / "pipeline.json"))
  train = sorted(
    (r for r in pipe if r.get("kind") == "train_input" and number(r.get("threads")) is not None),
    key=lambda r: r["threads"],
  )
  if train:
    one, most = train[0], train[-1]
    rows.append(
      ("pipeline", f"train input alone, {threads(one['threads'])}", fmt_rate(one.get("samples_per_s")) or "n/a")
    )
    if most is not one:
      ratio = most.get("vs_one")
      if number(ratio) is None and number(most.get("samples_per_s")) and number(one.get("samples_per_s")):
        ratio = most["samples_per_s"] / one["samples_per_s"]
      rows.append(
        ("pipeline", f"train input alone, {threads(most['threads'])}", fmt_rate(most.get("samples_per_s")) or "n/a")
      )
      rows.append(
        ("pipeline", f"train input scaling, {most['threads']} vs {threads(one['threads'])}", fmt_ratio(ratio) or "n/a")
      )
  else:
    rows.append(("pipeline", "train input alone", phases.missing("pipeline")))
  evals = sorted(
    (r for r in pipe if r.get("kind") == "eval_input" and number(r.get("threads")) is not None),
    key=lambda r: r["threads"],
  )
  if evals:
    rows.append(
      (
        "pipeline",
        f"eval input alone, {threads(evals[-1]['threads'])}",
        fmt_rate(evals[-1].get("rows_per_s"), "rows/s") or "n/a",
      )
    )
  else:
    rows.append(("pipeline", "eval input alone", phases.missing("pipeline")))
  step_rates = {r.get("model"): r.get("samples_per_s") for r in pipe if r.get("kind") == "step"}
  ends: dict[str, list[dict]] = {}
  for r in pipe:
    if r.get("kind") == "end_to_end":
      ends.setdefault(r.get("model"), []).append(r)
  for m in phases.models("pipeline") + [m for m in ends if m not in phases.models("pipeline")]:
    measured = [r for r in ends.get(m, []) if fmt_rate(r.get("samples_per_s")) is not None]
    if not measured:
      rows.append(("pipeline", f"{m} input + step", phases.missing("pipeline")))
      continue
    for r in measured:
      value = fmt_rate(r["samples_per_s"])
      vs = r.get("vs_step")
      if number(vs) is None and number(step_rates.get(m)):
        vs = r["samples_per_s"] / step_rates[m]
      if number(vs) is not None:
        value += f" ({fmt_ratio(vs)} of the step alone)"
      how = ", ".join(
        x for x in (r.get("placement"), f"{r['steps_per_call']} per call" if r.get("steps_per_call") else None) if x
      )
      rows.append(("pipeline", f"{m} input + step" + (f" ({how})" if how else ""), value))

  for r in pipe:
    if r.get("kind") == "evaluation" and fmt_rate(r.get("rows_per_s"), "rows/s"):
      where = f" ({r['placement']})" if r.get("placement") else ""
      rows.append(
        ("pipeline", f"{r.get('model')} evaluation, input + eval step{where}", fmt_rate(r["rows_per_s"], "rows/s"))
      )
    if r.get("kind") == "load" and number(r.get("seconds")) is not None:
      rows.append(("pipeline", r.get("what", "load"), f"{r['seconds']:.2f} s"))

  result = read_json(out / "end_to_end.json")
  result = result if isinstance(result, dict) else {}
  missing = phases.missing("end_to_end")
  rows.append(("end_to_end", "launch.py run, samples/s", fmt_rate(result.get("samples_per_s")) or missing))
  wall = number(result.get("wall_s"))
  rows.append(("end_to_end", "launch.py run, wall time", f"{wall:,.1f} s" if wall is not None else missing))
  auc = number(result.get("auc"))
  rows.append(("end_to_end", "launch.py run, test AUC", f"{auc:.4f}" if auc is not None else missing))
  evaluations = count_evaluations(out / "commercial_run" / "metrics.jsonl")
  if evaluations is not None:
    rows.append(("end_to_end", "launch.py run, evaluations", str(evaluations)))

  for phase in SAMPLED:
    samples = gpu_samples(out / f"{phase}.gpu.csv")
    if not samples:
      value = "n/a"
    else:
      util = [u for u, _ in samples]
      value = (
        f"{statistics.median(util):.0f}% / {max(util):.0f}% "
        f"(max memory {max(m for _, m in samples):,.0f} MiB, {len(samples)} samples)"
      )
    rows.append((phase, "GPU utilisation, median / max", value))
  return rows


def count_evaluations(path: Path) -> int | None:
  """Evaluation rounds in the run's metrics.jsonl (steps with a line of a split other than "train", which
  logs training progress); None without the file."""
  try:
    lines = path.read_text().splitlines()
  except OSError:
    return None
  steps = set()
  for line in lines:
    try:
      event = json.loads(line)
    except ValueError:
      continue  # a line cut short by a killed run
    if isinstance(event, dict) and event.get("split") not in (None, "train"):
      steps.add(event.get("step"))
  return len(steps)


def markdown(rows: list[tuple[str, str, str]]) -> str:
  cell = lambda s: str(s).replace("|", "\\|")  # noqa: E731  (a pipe inside a value would split the cell)
  lines = ["| phase | what | value |", "|---|---|---|"]
  lines += [f"| {cell(p)} | {cell(w)} | {cell(v)} |" for p, w, v in rows]
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  args = sys.argv[1:] if argv is None else argv
  if len(args) != 1 or args[0] in ("-h", "--help"):
    print(__doc__.strip())
    return 0 if args and args[0] in ("-h", "--help") else 2
  out = Path(args[0])
  if not out.is_dir():
    print(f"error: {out} is not a folder", file=sys.stderr)
    return 2
  text = markdown(build(out))
  (out / "table.md").write_text(text)
  print(text, end="")
  return 0


if __name__ == "__main__":
  sys.exit(main())
