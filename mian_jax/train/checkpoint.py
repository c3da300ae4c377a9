"""Orbax checkpoints: model + optimizer + step + RNG (the TrainState), the data position (global batches) and
the config, saved together as one step directory, atomically (Orbax writes to a temporary directory and
renames it when complete; a half-written one is never restored and is cleaned up on the next start).

Kept: the latest `keep` checkpoints and the best by the selection metric (the validation AUC; checkpoints
saved at an evaluation carry its metrics).

A checkpoint that cannot be read (missing or truncated files) is moved aside by the trainer
(`set_aside`) and the next older one is used (run.restore_first_readable).

Restoring places every array with the shardings of the current run, so a checkpoint written on N
devices restores on M. Embedding tables padded for another `model` axis (rows rounded up to its size)
are restored at their stored row count and cut or zero-padded to this run's (padding rows are never
looked up); any other difference from the expected state raises CheckpointMismatch, naming it.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import io
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging as absl_logging
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec as P
from orbax.checkpoint import checkpoint_managers as cm

from mian_jax import files, interrupts


class CheckpointMismatch(ValueError):
  """The checkpoint does not hold the state this run expects (another model, schema or data set)."""


class CheckpointUnreadable(RuntimeError):
  """A file of the checkpoint is missing or damaged (the trainer then uses the next older one)."""


REQUIRED_FILES = ("state/_METADATA", "data/metadata", "config/metadata")  # what every complete step directory holds
# Every file of a step folder with its size and SHA-256, written last (atomically) by process 0 once the
# step is complete; a restore checks them first. Orbax itself keeps no checksums: flipped bytes inside a
# stored array would restore silently.
MANIFEST = "manifest.json"


def stored_array_problem(e: BaseException) -> str | None:
  """What TensorStore found wrong with a stored array, in one line, or None for another error.

  Orbax raises "Encountered error while reading array index ... See full TensorStore details: <a 60-line
  spec>"; the cause names the array and the fault ('Error reading "opt_state.0.nu.tables.x/0.0" in OCDBT
  database at local file ...: ZSTD_decompressStream() failed: ...')."""
  for err in (e, e.__cause__, e.__context__):
    found = err is not None and re.search(r'Error reading "([^"/]+)[^"]*" in OCDBT database at [^:]*: (.*)', str(err))
    if found:
      return f"its stored array {found.group(1)} is damaged ({found.group(2).splitlines()[0][:160]})"
  if "See full TensorStore details" in str(e):
    return "one of its stored arrays could not be read (" + str(e).split(". See full TensorStore")[0][:160] + ")"
  return None


_HOLDING = {"depth": 0, "dropped": False}  # stderr_held contexts open; whether one of them ended in `drop`


@contextlib.contextmanager
def stderr_held(drop: tuple[type[BaseException], ...], mute_after: bool = False):
  """Holds what is printed to stderr while Orbax works: Python's sys.stderr (and the logging handlers
  bound to it) goes to a buffer, file descriptor 2 (TensorStore's callbacks print straight to it) to a
  temporary file, and the ignored exceptions of Orbax's coroutines ("Event loop is closed", TensorStore
  specs of 60 lines apiece) are dropped. When the block ends, or fails with another exception, the
  held text is written out as it is; when it fails with one of `drop`, the held text is that failure's
  echoes (thousands of lines, from several threads at once, where the caller reports one) and is
  dropped, here and in every enclosing `stderr_held` (the late echoes of a failed restore land in the
  next one; the project itself prints nothing inside). With `mute_after`, stderr and logging stay
  silenced after such a failure: a failed write's threads go on printing, and the run, about to stop,
  reports on sys.__stderr__. A garbage collection on the way out lets late echoes arrive in time."""
  previous = sys.unraisablehook

  def hook(unraisable):
    text = str(unraisable.exc_value)
    if not (text == "Event loop is closed" or "TensorStore" in text or "OCDBT" in text):
      previous(unraisable)

  sys.stderr.flush()
  buffer, stderr = io.StringIO(), sys.stderr
  held, saved = tempfile.TemporaryFile(), os.dup(2)
  os.dup2(held.fileno(), 2)
  interrupts.error_fd.append(saved)  # a second Ctrl-C's line still reaches the terminal
  sys.stderr, sys.unraisablehook = buffer, hook
  if _HOLDING["depth"] == 0:
    _HOLDING["dropped"] = False
  _HOLDING["depth"] += 1
  dropped = False
  try:
    yield
  except drop:
    _HOLDING["dropped"] = dropped = True
    raise
  finally:
    _HOLDING["depth"] -= 1
    gc.collect()
    sys.unraisablehook, sys.stderr = previous, stderr
    os.dup2(saved, 2)
    interrupts.error_fd.remove(saved)
    os.close(saved)
    held.seek(0)
    text = buffer.getvalue() + held.read().decode(errors="replace")
    held.close()
    if dropped and mute_after:
      sys.stderr = open(os.devnull, "w")
      logging.disable(logging.CRITICAL)
      absl_logging.set_verbosity(absl_logging.FATAL)
    elif text and not _HOLDING["dropped"]:
      sys.stderr.write(text)
      sys.stderr.flush()


def echoes_dropped():
  """A restore's stderr held (`stderr_held`): dropped when a stored array was damaged."""
  return stderr_held(drop=(CheckpointUnreadable,))


def _sha256(path: Path) -> str:
  digest = hashlib.sha256()
  with path.open("rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def write_manifest(step_dir: Path) -> None:
  """The manifest of a complete step folder (see MANIFEST)."""
  entries = {
    str(p.relative_to(step_dir)): {"size": p.stat().st_size, "sha256": _sha256(p)}
    for p in sorted(step_dir.rglob("*"))
    if p.is_file() and p.name != MANIFEST
  }
  files.write_json(step_dir / MANIFEST, {"format": 1, "files": entries})


def check_manifest(step_dir: Path) -> bool:
  """True when the step folder matches its manifest, False when it has none (written before manifests);
  CheckpointUnreadable naming the first file that is missing, resized or changed."""
  path = step_dir / MANIFEST
  if not path.exists():
    return False
  try:
    manifest = files.read_json(path)
    entries = manifest["files"]
    items = [(str(name), int(e["size"]), str(e["sha256"])) for name, e in entries.items()]
  except (files.Damaged, KeyError, TypeError, ValueError, AttributeError):
    raise CheckpointUnreadable(f"its {MANIFEST} is damaged") from None
  for name, size, sha in items:
    f = step_dir / name
    if not f.is_file():
      raise CheckpointUnreadable(f"{name} is missing")
    if f.stat().st_size != size:
      raise CheckpointUnreadable(f"{name} holds {f.stat().st_size} bytes, its manifest says {size}")
    if _sha256(f) != sha:
      raise CheckpointUnreadable(f"{name} does not match its checksum (the file was changed or damaged)")
  return True


class CheckpointWriteError(RuntimeError):
  """Writing a checkpoint failed; the complete ones are untouched, the half-written one is removed on
  the next start."""

  def __init__(self, step: int, cause: Exception):
    super().__init__(str(cause))
    self.step, self.cause = step, cause


def _name(path) -> str:
  return ".".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _auc(metrics: dict[str, float]) -> float:
  """What the best checkpoint is chosen by: `select` (the validation AUC, see loop.evaluate_splits); an
  older checkpoint's test `auc`."""
  return float(metrics["select"] if "select" in metrics else metrics["auc"])


class Checkpoints:
  """A workdir's checkpoints. `read_only` (--eval, --predict, --export, --plot: `Run.restore`) creates,
  cleans and deletes nothing: a reader beside a training run must not remove the checkpoint that run is
  writing (Orbax's start-up removes "stale" temporary step folders unless told not to)."""

  def __init__(self, directory: str | Path, keep: int = 3, read_only: bool = False):
    policy = cm.AnyPreservationPolicy(
      [
        cm.LatestN(n=keep),
        cm.BestN(get_metric_fn=_auc, n=1, keep_checkpoints_without_metrics=False),
      ]
    )
    options = ocp.CheckpointManagerOptions(
      preservation_policy=policy,
      best_fn=_auc,
      best_mode="max",
      cleanup_tmp_directories=not read_only,
      enable_async_checkpointing=False,
      read_only=read_only,
      create=not read_only,
      save_root_metadata=not read_only,
    )
    self.read_only = read_only
    self.unverified: set[int] = set()  # restored steps that have no manifest (written before manifests)
    self._manager = ocp.CheckpointManager(
      Path(directory).absolute(),
      options=options,
      item_handlers={
        "state": ocp.StandardCheckpointHandler(),
        "data": ocp.JsonCheckpointHandler(),
        "config": ocp.JsonCheckpointHandler(),
      },
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    return self._manager.best_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(
    self,
    step: int,
    state: Any,
    data_state: dict[str, Any],
    config: dict[str, Any],
    metrics: dict[str, float] | None = None,
  ) -> None:
    if step in self._manager.all_steps():  # e.g. a final save right after a periodic one
      return
    # a failed write (a full disk) prints hundreds of tracebacks from its threads: the caller reports one line
    with stderr_held(drop=(CheckpointWriteError,), mute_after=True):
      try:
        self._manager.save(
          step,
          args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state), config=ocp.args.JsonSave(config)
          ),
          metrics=metrics,
          force=True,
        )
        self._manager.wait_until_finished()
        if jax.process_index() == 0:
          write_manifest(Path(self._manager.directory) / str(step))
      except Exception as e:
        with contextlib.suppress(Exception):  # the writer's own failure, already caught above
          self._manager.wait_until_finished()
        raise CheckpointWriteError(step, e) from e

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Restores `step` into the shapes and shardings of `abstract_state` (jax.ShapeDtypeStruct tree)."""
    for required in REQUIRED_FILES:  # without them Orbax would describe a damaged checkpoint as another model's
      if not (Path(self._manager.directory) / str(step) / required).is_file():
        raise CheckpointUnreadable(f"{required} is missing")
    self.unverified.discard(step)
    if not check_manifest(Path(self._manager.directory) / str(step)):
      self.unverified.add(step)
    with interrupts.held():  # Orbax reads in coroutines: see interrupts.held
      metadata = self._manager.item_metadata(step).state
    stored = {_name(p): leaf.shape for p, leaf in jax.tree_util.tree_leaves_with_path(metadata)}
    wanted = {_name(p): x for p, x in jax.tree_util.tree_leaves_with_path(abstract_state)}
    missing, extra = sorted(set(wanted) - set(stored)), sorted(set(stored) - set(wanted))
    if missing or extra:
      raise CheckpointMismatch(
        f"checkpoint step {step} holds other arrays than this model: "
        + "; ".join(
          f"{what} {', '.join(names[:3])}" + (" ..." if len(names) > 3 else "")
          for what, names in (("missing", missing), ("unexpected", extra))
          if names
        )
      )
    resized = {}
    for name, x in wanted.items():
      have = tuple(stored[name])
      if have == tuple(x.shape):
        continue
      if ".tables." not in f".{name}." or have[1:] != tuple(x.shape[1:]):
        raise CheckpointMismatch(
          f"checkpoint step {step}: {name} has shape {have}, this model expects {tuple(x.shape)}"
        )
      resized[name] = jax.ShapeDtypeStruct(have, x.dtype, sharding=NamedSharding(x.sharding.mesh, P()))
    target = jax.tree_util.tree_map_with_path(lambda p, x: resized.get(_name(p), x), abstract_state)
    with echoes_dropped(), interrupts.held():
      try:
        out = self._manager.restore(
          step,
          args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore(), config=ocp.args.JsonRestore()
          ),
        )
      except Exception as e:
        damaged = stored_array_problem(e)
        if damaged:
          raise CheckpointUnreadable(damaged) from e
        raise
    state = out.state
    if resized:
      state = jax.tree_util.tree_map_with_path(
        lambda p, a, x: _resize_rows(a, x) if _name(p) in resized else a, state, abstract_state
      )
    return state, out.data, out.config

  def set_aside(self, step: int, reason: str) -> Path:
    """Moves the unreadable checkpoint `step` to `<checkpoints>.damaged/<step>-<time>/` (kept for a look, never
    restored again, and no longer in the way of a new checkpoint of that step) with a note of `reason`."""
    if self.read_only:
      raise RuntimeError("a read-only Checkpoints moves nothing")
    self._manager.wait_until_finished()
    source = Path(self._manager.directory) / str(step)
    dest = source.parent.with_name(source.parent.name + ".damaged") / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.rename(source, dest)
    (dest.parent / f"{dest.name}.reason.txt").write_text(reason + "\n")
    self._manager.reload()
    return dest

  def exists(self, step: int) -> bool:
    return (Path(self._manager.directory) / str(step)).is_dir()

  def reload(self) -> None:
    """Lists the steps again (a training run beside a reader writes new ones and removes old ones)."""
    self._manager.reload()

  def read_config(self, step: int) -> dict[str, Any]:
    with interrupts.held():
      return self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract(state: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `state` (from jax.eval_shape) placed with `shardings` (a tree like `state`)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


def _resize_rows(array: jax.Array, like: jax.ShapeDtypeStruct) -> jax.Array:
  """`array` cut or zero-padded along its rows to `like`'s row count, placed with `like`'s sharding."""
  rows = like.shape[0]

  def fit(a):
    a = a[:rows]
    return jnp.pad(a, [(0, rows - a.shape[0])] + [(0, 0)] * (a.ndim - 1))

  return jax.jit(fit, out_shardings=like.sharding)(array)
