"""Runs a sweep: one `launch.py` process per trial, in parallel on disjoint device groups, then the
summary (results.csv, results.md, results.png).

- Every trial is its own process that sees only its devices (CUDA_VISIBLE_DEVICES / HIP_VISIBLE_DEVICES
  on GPUs, TPU_VISIBLE_CHIPS and its companions on TPUs, a number of fake host devices on CPU), so a
  crash in one does not touch the others and each starts from a clean JAX runtime.
- A trial whose workdir holds `result.json` written for the same overrides (`trial.json`) is finished
  and not run again; any other resumes from its own checkpoints (launch.py does that by itself).
- SIGTERM / SIGINT to the sweep are passed on to the running trials, which save a checkpoint and stop;
  the summary marks them `interrupted` and the sweep exits with errors.EXIT_PREEMPTED (75).
- One sweep runs on one host; a multi-host trial is a plain multi-host `launch.py` run.
"""

from __future__ import annotations

import csv
import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mian_jax import errors, files, plots, significance
from mian_jax.train import predictions, workdir as workdir_lib

ROOT = Path(__file__).resolve().parents[1]
RESULT_KEYS = (
  "best_step",
  "step",
  "best_epoch",
  "epoch",
  "valid_auc",
  "auc",
  "gauc",
  "logloss",
  "samples_per_s",
  "wall_s",
)
EXIT_PREEMPTED = errors.EXIT_PREEMPTED
_TPU_BOUNDS = {1: "1,1,1", 2: "1,2,1", 4: "2,2,1"}


def trial_ids(trials: list[dict[str, str]]) -> list[str]:
  """Readable, stable ids: `name=mian,ibim_encoder=none` (the last part of each key, the whole key
  where two keys end alike; characters other than letters, digits and `.+-` become `_`)."""
  keys = [k for t in trials for k in t]
  short = {k: k.rsplit(".", 1)[-1] for k in keys}
  clash = {s for s in short.values() if len({k for k in keys if short[k] == s}) > 1}
  clean = lambda v: re.sub(r"[^A-Za-z0-9.+\-]", "_", v)
  ids = [
    ",".join(f"{short[k] if short[k] not in clash else k}={clean(v)}" for k, v in t.items()) or "default"
    for t in trials
  ]
  repeated = sorted({i for i in ids if ids.count(i) > 1})
  if repeated:
    raise ValueError(f"the sweep lists trial {repeated[0]} more than once")
  return ids


def probe_devices(env: dict[str, str]) -> tuple[str, int, str]:
  """(platform, device count, platform version) as a trial process would see them, asked in a short-lived
  process so that this one never holds an accelerator."""
  code = "import jax; d = jax.devices(); print(d[0].platform, len(d), d[0].client.platform_version)"
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
  if out.returncode:
    raise RuntimeError(f"could not list the devices: {out.stderr.strip().splitlines()[-1:]}")
  platform, count, version = out.stdout.strip().splitlines()[-1].split(" ", 2)
  return platform, int(count), version


def device_groups(
  platform: str, count: int, per_trial: int, env: dict[str, str], version: str = ""
) -> list[tuple[str, dict[str, str]]]:
  """Disjoint device groups as (label, environment of a trial process on that group).

  per_trial 0 = one device per trial on accelerators, every device (one trial at a time) on CPU."""
  per_trial = per_trial or (count if platform == "cpu" else 1)
  if per_trial > count:
    raise ValueError(f"sweep.devices_per_trial={per_trial}, but there are only {count} {platform} device(s)")
  groups = []
  for g in range(count // per_trial):
    ids = list(range(g * per_trial, (g + 1) * per_trial))
    label = f"{platform}:{ids[0]}" + (f"-{ids[-1]}" if len(ids) > 1 else "")
    if platform == "cpu":
      flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", "")).strip()
      extra = {"XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={per_trial}".strip()}
    elif platform == "gpu":
      var = "HIP_VISIBLE_DEVICES" if "rocm" in version.lower() else "CUDA_VISIBLE_DEVICES"
      visible = [v for v in env.get(var, "").split(",") if v.strip()] or [str(i) for i in range(count)]
      extra = {var: ",".join(visible[i] for i in ids)}
    elif platform == "tpu":
      if per_trial not in _TPU_BOUNDS and per_trial != count:
        raise ValueError(f"sweep.devices_per_trial={per_trial} on TPU: use 1, 2, 4 or all {count} chips")
      extra = (
        {}
        if per_trial == count
        else {
          "TPU_VISIBLE_CHIPS": ",".join(map(str, ids)),
          "TPU_CHIPS_PER_PROCESS_BOUNDS": _TPU_BOUNDS[per_trial],
          "TPU_PROCESS_BOUNDS": "1,1,1",
          "TPU_PROCESS_PORT": str(8476 + g),
          "TPU_PROCESS_ADDRESSES": f"localhost:{8476 + g}",
          "CLOUD_TPU_TASK_ID": "0",
        }
      )
    else:
      raise ValueError(f"sweep.devices_per_trial on {platform}: only cpu, gpu and tpu devices can be split")
    groups.append((label, {**env, **extra}))
  return groups


def _command(experiment: str, workdir: Path, sets: list[str], fresh: bool) -> list[str]:
  cmd = [sys.executable, str(ROOT / "launch.py"), "--experiment", experiment, "--workdir", str(workdir)]
  for assignment in sets:
    cmd += ["--set", assignment]
  return cmd + (["--fresh"] if fresh else [])


def is_sweep(folder: Path) -> bool:
  """A sweep's root: it holds results.csv, its lock file or a trial workdir (a folder with trial.json)."""
  return (
    (folder / "results.csv").exists()
    or (folder / ".sweep.lock").exists()
    or any((c / "trial.json").exists() for c in folder.iterdir() if c.is_dir())
  )


def _result(workdir: Path) -> dict[str, Any] | None:
  """The trial's result.json, or None when there is none or it cannot be read (the trial then runs again:
  it resumes from its checkpoints and writes the result anew)."""
  try:
    result = files.read_json(workdir / "result.json")
  except (OSError, files.Damaged):
    return None
  return result if isinstance(result, dict) else None


def _finished(workdir: Path, sets: list[str]) -> bool:
  """result.json for the same overrides, and its test predictions unless no checkpoint is left to write
  them from (a finished trial without them runs again to write them: it trains nothing)."""
  try:
    trial = files.read_json(workdir / "trial.json")
  except (OSError, files.Damaged):
    return False
  if not (isinstance(trial, dict) and trial.get("sets") == sets and _result(workdir) is not None):
    return False
  return predictions.step_of(workdir / predictions.FILE) is not None or not workdir_lib.checkpoint_steps(workdir)


def _row(tid: str, overrides: dict[str, str], workdir: Path, code: int | None, device: str) -> dict[str, Any]:
  row: dict[str, Any] = {"trial": tid, **overrides, "devices": device}
  result = _result(workdir)
  if code in (None, 0) and result is not None:
    return {**row, **{k: result.get(k) for k in RESULT_KEYS}, "status": "ok"}
  if code == EXIT_PREEMPTED:
    return {**row, "status": "interrupted"}
  log = (workdir / "log.txt").read_text().strip().splitlines() if (workdir / "log.txt").exists() else []
  errors = [l for l in log if l.startswith("error:")] or log[-1:] or ["no output"]
  return {**row, "status": f"failed: {errors[-1]}"}


def run(
  experiment: str,
  trials: list[dict[str, str]],
  root: Path,
  base_sets: list[str],
  devices_per_trial: int = 0,
  fresh: bool = False,
  env: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
  """Runs every unfinished trial (each `base_sets` + its overrides) and returns one row per trial, in
  the sweep's order; writes results.csv / results.md / results.png in `root`."""
  env = dict(os.environ if env is None else env)
  root = files.claim(root, "a sweep", is_sweep, "choose a new or empty --workdir for the sweep (or an earlier sweep's)")
  root.mkdir(parents=True, exist_ok=True)
  with files.Exclusive(
    root / ".sweep.lock",
    f"{root} is in use by another sweep ({{owner}}); wait for it to finish, stop it, or use another --workdir",
  ):
    return _run_locked(experiment, trials, root, base_sets, devices_per_trial, fresh, env)


def _run_locked(experiment, trials, root, base_sets, devices_per_trial, fresh, env) -> list[dict[str, Any]]:
  ids = trial_ids(trials)
  sets = [base_sets + [f"{k}={v}" for k, v in t.items()] for t in trials]
  rows: dict[int, dict[str, Any]] = {}
  todo = []
  for i, (tid, t) in enumerate(zip(ids, trials)):
    if not fresh and _finished(root / tid, sets[i]):
      print(f"[{i + 1}/{len(trials)}] {tid}: finished before, not run again", flush=True)
      rows[i] = _row(tid, t, root / tid, None, "")
    else:
      todo.append(i)
  if todo:
    platform, count, version = probe_devices(env)
    groups = device_groups(platform, count, devices_per_trial, env, version)
    print(
      f"{len(todo)} trial(s) to run, {len(groups)} at a time on {platform} ({', '.join(label for label, _ in groups)})",
      flush=True,
    )
    rows.update(_run_parallel(experiment, todo, ids, trials, sets, root, groups, fresh))
  ordered = [rows[i] for i in range(len(trials))]
  summarize(root, ordered)
  return ordered


def _run_parallel(experiment, todo, ids, trials, sets, root, groups, fresh) -> dict[int, dict[str, Any]]:
  free = list(range(len(groups)))
  running: dict[int, tuple[subprocess.Popen, int, Any, float]] = {}  # trial -> (process, group, log, start)
  rows: dict[int, dict[str, Any]] = {}
  stop: list[int] = []
  stopping = False
  old = {s: signal.signal(s, lambda signum, frame: stop.append(signum)) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    queue = list(todo)
    while queue or running:
      while queue and free and not stopping:
        i, g = queue.pop(0), free.pop(0)
        workdir = root / ids[i]
        workdir.mkdir(parents=True, exist_ok=True)
        files.write_json(workdir / "trial.json", {"overrides": trials[i], "sets": sets[i]})
        log = (workdir / "log.txt").open("a")
        log.write(f"== {time.strftime('%Y-%m-%d %H:%M:%S')} on {groups[g][0]}\n")
        log.flush()
        print(f"[{i + 1}/{len(trials)}] {ids[i]}: training on {groups[g][0]} in {workdir}", flush=True)
        proc = subprocess.Popen(
          _command(experiment, workdir, sets[i], fresh),
          cwd=ROOT,
          env=groups[g][1],
          stdout=log,
          stderr=subprocess.STDOUT,
          start_new_session=True,
        )
        running[i] = (proc, g, log, time.time())
      if stop and not stopping:
        stopping = True
        queue.clear()
        for proc, *_ in running.values():
          if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # once: the trial saves a checkpoint and exits
      for i, (proc, g, log, start) in list(running.items()):
        code = proc.poll()
        if code is None:
          continue
        log.close()
        del running[i]
        free.append(g)
        rows[i] = _row(ids[i], trials[i], root / ids[i], code, groups[g][0])
        last = (root / ids[i] / "log.txt").read_text().strip().splitlines()
        print(
          f"[{i + 1}/{len(trials)}] {ids[i]}: {rows[i]['status']} after {time.time() - start:.0f} s"
          f"{' - ' + last[-1] if last and rows[i]['status'] == 'ok' else ''}",
          flush=True,
        )
      time.sleep(0.2)
  finally:
    for s, handler in old.items():
      signal.signal(s, handler)
  for i in todo:  # never started because the sweep was stopped
    rows.setdefault(i, {"trial": ids[i], **trials[i], "devices": "", "status": "interrupted"})
  return rows


# ------------------------------------------------------------------------------------------ summary


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
  keys: list[str] = []
  for r in rows:
    keys += [k for k in r if k not in keys]
  out = io.StringIO(newline="")
  w = csv.DictWriter(out, fieldnames=keys)
  w.writeheader()
  w.writerows(rows)
  files.write_text(path, out.getvalue())


def rela_impr(auc: float, base: float) -> float:
  """DIN's RelaImpr: relative gain over the 0.5 of a random guess, in %."""
  return ((auc - 0.5) / (base - 0.5) - 1) * 100


def groups_over_seeds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Trials that differ only in train.seed, together: label, n, mean and std (ddof 1) per metric."""
  out: dict[str, dict[str, Any]] = {}
  for r in rows:
    keys = [k for k in r if "." in k and k != "train.seed"]
    label = ", ".join(f"{k.rsplit('.', 1)[-1]}={r[k]}" for k in keys) or "default"
    g = out.setdefault(label, {"label": label, "overrides": {k: r[k] for k in keys}, "ok": [], "failed": 0})
    if r["status"] == "ok":
      g["ok"].append(r)
    else:
      g["failed"] += 1
  for g in out.values():
    for k in ("valid_auc", "auc", "gauc", "logloss", "samples_per_s"):
      values = np.array([r[k] for r in g["ok"] if r.get(k) is not None], float)
      g[k] = (float(values.mean()) if len(values) else None, float(values.std(ddof=1)) if len(values) > 1 else None)
    g["n"] = len(g["ok"])
  return list(out.values())


def _cell(mean_std: tuple[float | None, float | None], digits: int = 4) -> str:
  mean, std = mean_std
  if mean is None:
    return "-"
  return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def best_group(groups: list[dict[str, Any]]) -> dict[str, Any] | None:
  """The setting of the highest mean test AUC."""
  scored = [g for g in groups if g["n"] and g["auc"][0] is not None]
  return max(scored, key=lambda g: g["auc"][0]) if scored else None


def differences(
  root: Path, groups: list[dict[str, Any]], against: dict[str, Any] | None = None
) -> dict[str, significance.Difference]:
  """{setting: its mean test AUC minus the best setting's (or `against`'s), with DeLong's 95% interval}, from
  the trials' test_predictions.npz (settings missing a trial's predictions, or scored on other rows, are
  left out)."""
  top = against or best_group(groups)
  if top is None:
    return {}
  loaded: dict[str, list[np.ndarray] | None] = {}
  labels = None
  for g in groups:
    probs = []
    for r in g["ok"]:
      try:
        p = predictions.read(root / r["trial"] / predictions.FILE)
      except (FileNotFoundError, predictions.Unreadable):
        break
      if labels is None:
        labels = p.label_n
      if not np.array_equal(p.label_n, labels):  # another test split (another data set or its order)
        break
      probs.append(p.prob_n)
    else:
      loaded[g["label"]] = probs if probs else None
  if not loaded.get(top["label"]):
    return {}
  return {
    label: significance.mean_difference(labels, np.stack(probs), np.stack(loaded[top["label"]]))
    for label, probs in loaded.items()
    if probs
  }


def settings_table(
  groups: list[dict[str, Any]],
  intervals: dict[str, str] | None = None,
  extra: dict[str, Callable[[dict[str, Any]], str]] | None = None,
  short_labels: bool = False,
) -> list[str]:
  """The markdown rows of a sweep's settings (`groups_over_seeds`): mean ± std over seeds of the
  validation and test AUC, test gAUC and logloss (the best of each column in bold), with `intervals`
  ({setting: its "AUC − best [95% CI]" cell}) that column, then the `extra` columns ({head: cell of a
  group}). `short_labels`: a setting that only names the model is shown by the model's name."""
  scored = [g for g in groups if g["n"]]
  cols = [("valid_auc", max), ("auc", max), ("gauc", max), ("logloss", min)]
  best = {k: pick((g[k][0] for g in scored if g[k][0] is not None), default=None) for k, pick in cols}
  cell = lambda g, k: f"**{_cell(g[k])}**" if g[k][0] is not None and g[k][0] == best.get(k) else _cell(g[k])
  top, extra = best_group(groups), extra or {}
  head = ["setting", "n", "valid AUC", "test AUC"] + (["AUC − best [95% CI]"] if intervals is not None else [])
  head += ["test gAUC", "test logloss", *extra]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for g in groups:
    label = g["label"].removeprefix("name=") if short_labels and set(g["overrides"]) == {"model.name"} else g["label"]
    row = [label, str(g["n"]), cell(g, "valid_auc"), cell(g, "auc")]
    if intervals is not None:
      row.append("best" if g is top else intervals.get(g["label"], "-"))
    row += [cell(g, "gauc"), cell(g, "logloss")] + [fn(g) for fn in extra.values()]
    lines.append("| " + " | ".join(row) + " |")
  return lines


def reference_and_rival(
  groups: list[dict[str, Any]], reference: str = "mian"
) -> tuple[dict[str, Any], dict[str, Any]] | None:
  """(the reference model's setting, the best other model's by mean test AUC) among settings that set the
  model only; the other models exclude the reference's variants (mian_paper, its ablations). None when
  either is missing."""
  by_model = [g for g in groups if g["n"] and set(g["overrides"]) == {"model.name"}]
  ref = [g for g in by_model if g["overrides"]["model.name"] == reference]
  variant = lambda name: name == reference or name.startswith(f"{reference}_")
  others = [g for g in by_model if not variant(g["overrides"]["model.name"])]
  if not ref or not others:
    return None
  return ref[0], max(others, key=lambda g: g["auc"][0])


def results_markdown(
  rows: list[dict[str, Any]],
  reference: str = "mian",
  diffs: dict[str, significance.Difference] | None = None,
  vs_rival: significance.Difference | None = None,
) -> str:
  """Settings (`settings_table`; with `diffs`, each setting's AUC difference to the best one and its 95%
  interval), the reference model's gain over the best other model when the settings differ by model only
  (with `vs_rival`, its 95% interval), then every trial's status."""
  groups = groups_over_seeds(rows)
  intervals = {label: d.cell() for label, d in (diffs or {}).items()}
  extra = {"samples/s": lambda g: _cell(g["samples_per_s"], 0), "failed": lambda g: str(g["failed"])}
  lines = settings_table(groups, intervals, extra)
  pair = reference_and_rival(groups, reference)
  if pair:
    ref, top = pair
    interval = f", 95% CI [{vs_rival.low:+.4f}, {vs_rival.high:+.4f}] (DeLong)" if vs_rival else ""
    lines += [
      "",
      f"{reference} vs the best other model ({top['label']}): AUC {ref['auc'][0] - top['auc'][0]:+.4f}{interval} "
      f"(RelaImpr {rela_impr(ref['auc'][0], top['auc'][0]):+.2f}%), logloss "
      f"{ref['logloss'][0] - top['logloss'][0]:+.4f}",
    ]
  lines += [
    "",
    "| trial | status | valid AUC | AUC | best step | best epoch | stopped at epoch | wall s |",
    "|---|---|---|---|---|---|---|---|",
  ]
  fmt = lambda v, spec: format(v, spec) if isinstance(v, (int, float)) else "-"
  lines += [
    f"| {r['trial']} | {r['status']} | {fmt(r.get('valid_auc'), '.4f')} | {fmt(r.get('auc'), '.4f')} | "
    f"{fmt(r.get('best_step'), 'd')} | {fmt(r.get('best_epoch'), 'g')} | {fmt(r.get('epoch'), 'g')} | "
    f"{fmt(r.get('wall_s'), '.0f')} |"
    for r in rows
  ]
  return "\n".join(lines) + "\n"


def _setting_row(g: dict[str, Any], diff: significance.Difference | None) -> dict[str, Any]:
  row: dict[str, Any] = {"setting": g["label"], "n": g["n"], "failed": g["failed"]}
  for k in ("valid_auc", "auc", "gauc", "logloss", "samples_per_s"):
    row[f"{k}_mean"], row[f"{k}_std"] = g[k]
  if diff is not None:
    row.update(auc_minus_best=diff.estimate, ci95_low=diff.low, ci95_high=diff.high, p_value=diff.p_value)
  return row


def summarize(root: Path, rows: list[dict[str, Any]]) -> str:
  """Writes results.csv (a row per trial), settings.csv (a row per setting: mean and std over seeds, the AUC
  difference to the best setting with its 95% interval and p-value), results.md and results.png in `root`;
  returns the markdown."""
  _write_csv(root / "results.csv", rows)
  groups = groups_over_seeds(rows)
  diffs = differences(root, groups)
  _write_csv(root / "settings.csv", [_setting_row(g, diffs.get(g["label"])) for g in groups])
  pair = reference_and_rival(groups)
  vs_rival = differences(root, list(pair), against=pair[1]).get(pair[0]["label"]) if pair else None
  text = results_markdown(rows, diffs=diffs, vs_rival=vs_rival)
  files.write_text(root / "results.md", text)
  plots.sweep_auc(groups, root / "results.png", title=root.name)
  return text
