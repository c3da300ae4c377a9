"""Guards of a run's workdir: one run at a time, only in a folder that is a run's, and only checkpoints of
the same model and data.

- `is_run` / `Lock`: a workdir must be new, empty, or a run's workdir (it holds `.lock`, which every run
  creates first, `trial.json`, which a sweep writes before starting its trial, `metrics.jsonl` or
  `checkpoints/`); any other folder is refused before anything is written there (`files.NotOurs`).
- `set_aside_previous` (`--fresh`): the previous run's checkpoints, logs, results and TensorBoard events
  are moved to `<workdir>/previous-<time>/`, never deleted; the user removes that folder when done.
- `Lock`: an exclusive `flock` on `<workdir>/.lock`, taken by process 0 for the whole run. The kernel
  drops it when the process ends in any way (kill -9 included), so a crashed run never leaves it stuck;
  the file holds the owner's pid and host, which the refusal names.
- `identity` / `differences`: what must match between a checkpoint and the run resuming it: the model
  (its name and the fields that model reads, `models.fields`), the embedding optimizer (its slots are
  part of the state) and the data set (its cache directory, named by its generation / conversion
  parameters, and the feature schema's fingerprint). Training fields (steps, learning rate, batch
  size, mesh, ...) may change on resume.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from mian_jax import files
from mian_jax.config import Config
from mian_jax.errors import RunError

RUN_MARKERS = (".lock", "trial.json", "metrics.jsonl", "checkpoints")  # what only a run (or the sweep
# starting it) writes in its workdir
RUN_FILES = (
  "checkpoints",
  "checkpoints.damaged",
  "metrics.jsonl",
  "result.json",
  "config.json",
  "curves.png",
  "tensorboard",
  "gim_attention.png",
)  # what a run writes there (moved aside by --fresh)


def default(config: Config) -> Path:
  """`runs/<experiment>[-<variant>]/<model>`: a variant (commercial:tiny) never shares the main run's workdir."""
  return Path("runs") / config.experiment.replace(":", "-") / config.model.name


def default_sweep_root(config: Config, sweep: str) -> Path:
  """`runs/<experiment>[-<variant>]/sweeps/<sweep>`."""
  return Path("runs") / config.experiment.replace(":", "-") / "sweeps" / sweep


def checkpoint_steps(workdir: Path) -> list[int]:
  """The steps of the checkpoint folders in `<workdir>/checkpoints` (complete or not), read without opening
  Orbax, which would create the folder."""
  folder = Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and p.is_dir()) if folder.is_dir() else []


def is_run(folder: Path) -> bool:
  return any((Path(folder) / m).exists() for m in RUN_MARKERS)


def claim(workdir: Path) -> None:
  """Refuses (files.NotOurs) a workdir that holds files but is not a run's."""
  files.claim(workdir, "a run", is_run, "choose a new or empty --workdir (or one of an earlier run)")


def set_aside_previous(workdir: Path) -> Path | None:
  """Moves what an earlier run wrote in `workdir` to `<workdir>/previous-<time>/`; returns that folder, or
  None when there was nothing."""
  found = [workdir / name for name in RUN_FILES if (workdir / name).exists()]
  if not found:
    return None
  dest = workdir / f"previous-{time.strftime('%Y%m%d-%H%M%S')}"
  suffix = 0
  while dest.exists():
    suffix += 1
    dest = workdir / f"previous-{time.strftime('%Y%m%d-%H%M%S')}-{suffix}"
  dest.mkdir()
  for path in found:
    os.rename(path, dest / path.name)
  return dest


class WorkdirBusy(RunError):
  """Another run holds the workdir."""


class Lock:
  """One run per workdir: `<workdir>/.lock` held (files.Exclusive) while the run lasts; a second run is refused
  with WorkdirBusy naming the holder."""

  def __init__(self, workdir: Path, enabled: bool = True):
    self.path = Path(workdir) / ".lock"
    self.enabled = enabled
    self._held: files.Exclusive | None = None

  def __enter__(self) -> "Lock":
    if not self.enabled:
      return self
    claim(self.path.parent)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    held = files.Exclusive(
      self.path,
      f"{self.path.parent} is in use by another run ({{owner}}); wait for it to "
      f"finish, stop it, or use another --workdir",
    )
    try:
      self._held = held.__enter__()
    except files.Busy as e:
      raise WorkdirBusy(str(e)) from None
    return self

  def __exit__(self, *exc) -> None:
    if self._held is not None:
      self._held.__exit__(*exc)
      self._held = None


def identity(
  config: Config, data_id: str, schema_fingerprint: str, scale: float | None = None, rows: str | None = None
) -> dict[str, Any]:
  """What a checkpoint records of its run and a resuming run must match (see `differences`). "model" holds
  the model's name and only the model.* fields that model reads (models.fields): a change of another
  model's field (e.g. model.cin_layers under MIAN) does not refuse a resume. "data" is the data set's
  content id (data/shards.content_id: its name and a digest of its blocks and statistics), not its cache
  folder, whose name changes with the input files' mtimes: the same data converted again resumes. For a
  generated data set "data.scale" (resolved) comes first, so that a refusal names the setting that made the
  data differ (`data.scale: checkpoint 0.01, this run 0.03`). "data rows" (`rows`) is a digest of the shard
  files' content (data/shards.rows_digest): a resume on other rows with the same statistics is refused. A
  key that a saved identity lacks is not compared (`differences`)."""
  from mian_jax import models  # here: the registry imports flax, which the other guards do not need

  every = dataclasses.asdict(config.model)
  model = {"name": every["name"], **{f: every[f] for f in models.fields(config.model.name)}}
  scaled = {} if scale is None else {"data.scale": scale}
  rows_id = {} if rows is None else {"data rows": rows}
  return {
    "model": model,
    "train.embedding_optimizer": config.train.embedding_optimizer,
    **scaled,
    "data": data_id,
    **rows_id,
    "feature schema": schema_fingerprint,
  }


def differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
  """What differs, as `key: checkpoint X, this run Y` (model fields one by one). Only the model fields of
  `current` are compared (its name and the fields its model reads): a saved identity holding more (older
  checkpoints recorded every model.* field) still matches when those agree, and a field the checkpoint
  lacks counts as equal."""
  out = []
  for key in current:
    if key == "model":
      for field, value in current["model"].items():
        was = saved.get("model", {}).get(field, value)
        if was != value and not (
          isinstance(value, (list, tuple)) and isinstance(was, (list, tuple)) and list(was) == list(value)
        ):
          out.append(f"model.{field}: checkpoint {was}, this run {value}")
    elif key in saved and saved[key] != current[key]:
      out.append(f"{key}: checkpoint {saved[key]}, this run {current[key]}")
  return out
