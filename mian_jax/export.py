"""Exports the best checkpoint of a run as a self-describing serving directory (read by `serving.py`).

`export(config, workdir, out_dir)` restores the best checkpoint (`run.Run.restore`), takes the
function the evaluation computes, `probs [B] = sigmoid(logit)` (`step.make_eval_step`, float32, one
device), and serializes it with `jax.export` for a symbolic batch size `b`. The directory holds:

    model.jaxexport   `Exported.serialize()`: f(params, inputs) -> probs float32 [b]
    params.npz        the parameters as the leaves of f's first argument, in pytree order ("000000", ...)
    manifest.json     the inputs (name, dtype, per-sample shape, kind, vocabulary size, how a raw value is
                      encoded), the output, the feature schema (`schema.to_dict()`), the model name, the
                      SHA-256 of every other file (`sha256`) and of itself (`manifest_sha256`), checked by
                      `serving.Scorer.load`
    vocab/*.json      every vocabulary of the data set (a list: value k has id k + 1; 0 = padding / OOV)

Decisions:
- The parameters are a separate argument, not constants baked into the module: embedding tables grow
  with the vocabularies (hundreds of MB and more at full scale), and as constants they would bloat the
  StableHLO, hit the 2 GB limit of the serialized module and slow every compile; as an argument they
  are put on the device once by the loader and the function stays small. The cost is a second file,
  whose leaves are matched to the function by its own input tree (`Exported.in_tree`), not by names.
- The inputs are exactly what the eval step reads: every embedded feature (ids int32 [b], numeric
  float32 [b], sequences int32 [b, max_len], right-padded, oldest first) and `hist_len` int32 [b].
  `label`, `weight` and fields stored but not embedded (the user id by default) are not inputs.
- It is lowered for CPU, CUDA and TPU (`PLATFORMS`), so an export made on a laptop serves on an
  accelerator; where the platforms cannot be lowered together, for the platform it runs on only.
- A feature's vocabulary file is found by its table name (the converters' vocab name), then its own
  name, then the names of the features sharing its table (MovieLens writes `item_id.json` for the
  `item` table); features without one (the generated commercial set, whose values are ids) take ids.
  For raw values the manifest also carries what the converter did to a column: `newest_first` for a
  history stored newest first in the user's files, and `log1p` / `mean` / `std` for numeric columns.
- out_dir must be new, empty or a previous export (its manifest.json names this format); any other folder
  is refused before anything is written (the project never deletes what it did not write).
- Written to a temporary directory beside out_dir and renamed into place when complete; a previous
  export at out_dir is moved aside only then and deleted after the rename (so a failed or interrupted
  export changes nothing); a signal during or after the renames no longer stops the run
  (`interrupts.commit`).
  Run it in one process: the parameters are fetched to this host whole.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np

from mian_jax import files, interrupts, serving
from mian_jax.config import Config
from mian_jax.data import pipeline
from mian_jax.schema import FeatureSchema
from mian_jax.train import step as step_lib
from mian_jax.train.run import Run

FORMAT = "mian_jax.export/1"
FUNCTION_FILE = "model.jaxexport"
PARAMS_FILE = "params.npz"
MANIFEST_FILE = "manifest.json"
BATCH_DIM = "b"
PLATFORMS: tuple[str, ...] = ("cpu", "cuda", "tpu")


def is_export(folder: Path) -> bool:
  """A previous export: its manifest.json names this format."""
  try:
    manifest = files.read_json(Path(folder) / MANIFEST_FILE)
  except (OSError, files.Damaged):
    return False
  return isinstance(manifest, dict) and str(manifest.get("format", "")).startswith("mian_jax.export/")


def claim(out_dir: str | Path) -> Path:
  """out_dir, when an export may be written there (new, empty or a previous export); else files.NotOurs."""
  return files.claim(
    Path(out_dir).absolute(),
    "an export",
    is_export,
    "choose a new or empty folder for --export (or an earlier export, which is replaced)",
  )


def export(config: Config, workdir: str | Path, out_dir: str | Path) -> Path:
  """Exports the best checkpoint in `workdir` (the latest when none was evaluated) to `out_dir`."""
  claim(out_dir)  # before the minutes of restoring and lowering
  run, params, _ = Run.restore(config, workdir)
  return write(run.model, run.src, jax.device_get(params), out_dir, config.model.name)


def write(
  model: nn.Module,
  src: pipeline.Source,
  params: dict[str, Any],
  out_dir: str | Path,
  model_name: str,
  platforms: Sequence[str] | None = None,
) -> Path:
  """Serializes `model` with `params` (host arrays) for `src`'s schema into `out_dir`; returns out_dir."""
  out_dir = claim(out_dir)
  schema = src.schema
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  exported, used = _export(model, schema, params, platforms)
  vocab_dir = src.directory / "vocab"
  vocabs = sorted(p.name for p in vocab_dir.glob("*.json")) if vocab_dir.is_dir() else []
  manifest = {
    "format": FORMAT,
    "model": model_name,
    "function": FUNCTION_FILE,
    "params": PARAMS_FILE,
    "platforms": list(used),
    "batch_dim": BATCH_DIM,
    "inputs": _inputs(schema, src.meta, [Path(v).stem for v in vocabs]),
    "output": {"name": "probs", "dtype": "float32", "shape": []},
    "schema": schema.to_dict(),
    "jax_version": jax.__version__,
  }
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
  try:
    tmp.chmod(files.folder_mode())  # mkdtemp's 0700 would hide the export from a serving account
    (tmp / FUNCTION_FILE).write_bytes(exported.serialize())
    leaves = jax.tree.leaves(params)
    np.savez(tmp / PARAMS_FILE, **{f"{i:06d}": leaf for i, leaf in enumerate(leaves)})
    if vocabs:
      (tmp / "vocab").mkdir()
      for name in vocabs:
        shutil.copyfile(vocab_dir / name, tmp / "vocab" / name)
    manifest = serving.sealed(tmp, manifest)  # every file's SHA-256, and the manifest's own
    (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    interrupts.commit(lambda: _replace(tmp, out_dir))  # a signal from here on leaves it complete
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return out_dir


def input_names(schema: FeatureSchema) -> list[str]:
  """What the eval step reads from a batch: the embedded features, in schema order, and `hist_len`."""
  return [f.name for f in schema.features if f.embed] + ["hist_len"]


def _export(
  model: nn.Module, schema: FeatureSchema, params: dict[str, Any], platforms: Sequence[str] | None
) -> tuple[jax.export.Exported, tuple[str, ...]]:
  """(the serialized-to-be function, the platforms it was lowered for)."""
  eval_step = step_lib.make_eval_step(model, schema, "float32")
  (b,) = jax.export.symbolic_shape(BATCH_DIM)
  spec_b = {}
  for name in input_names(schema):
    f = schema[name] if name != "hist_len" else None
    shape = (b, schema.max_len) if f is not None and f.kind == "sequence" else (b,)
    dtype = np.float32 if f is not None and f.kind == "numeric" else np.int32
    spec_b[name] = jax.ShapeDtypeStruct(shape, dtype)
  spec_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  fn = jax.jit(eval_step)
  if platforms is not None:
    return jax.export.export(fn, platforms=platforms)(spec_params, spec_b), tuple(platforms)
  try:
    return jax.export.export(fn, platforms=PLATFORMS)(spec_params, spec_b), PLATFORMS
  except Exception:  # a platform whose lowering is unavailable here: this platform only
    here = (jax.default_backend(),)
    return jax.export.export(fn, platforms=here)(spec_params, spec_b), here


def vocab_of(schema: FeatureSchema, name: str, vocabs: Sequence[str]) -> str | None:
  """The vocabulary (a file stem under vocab/) that encodes feature `name`, or None (it takes ids)."""
  f = schema[name]
  if f.kind == "numeric":
    return None
  sharing = [g.name for g in schema.features if g.kind != "numeric" and g.table_name == f.table_name]
  for candidate in [f.table_name, f.name] + sharing:
    if candidate in vocabs:
      return candidate
  return None


def _columns(meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
  """The tabular converters' column settings by feature (empty for the other data sets)."""
  columns = meta.get("params", {}).get("spec", {}).get("columns", [])
  return {c["feature"]: c for c in columns if isinstance(c, dict) and "feature" in c}


def _inputs(schema: FeatureSchema, meta: dict[str, Any], vocabs: Sequence[str]) -> dict[str, dict[str, Any]]:
  columns = _columns(meta)
  standard = meta.get("stats", {}).get("numeric_standardisation", {})
  out: dict[str, dict[str, Any]] = {}
  for name in input_names(schema):
    if name == "hist_len":
      out[name] = {"kind": "hist_len", "dtype": "int32", "shape": [], "max": schema.max_len}
      continue
    f = schema[name]
    column = columns.get(name, {})
    if f.kind == "numeric":
      entry = {"kind": "numeric", "dtype": "float32", "shape": [], "log1p": bool(column.get("log1p", False))}
      if name in standard:
        entry.update(mean=float(standard[name]["mean"]), std=float(standard[name]["std"]))
    else:
      vocab = vocab_of(schema, name, vocabs)
      entry = {
        "kind": f.kind,
        "dtype": "int32",
        "shape": [schema.max_len] if f.kind == "sequence" else [],
        "vocab_size": f.vocab_size,
        "vocab": f"vocab/{vocab}.json" if vocab else None,
      }
      if f.kind == "sequence":
        entry["newest_first"] = bool(column.get("newest_first", False))
    out[name] = {"group": f.group, **entry}
  return out


def _replace(new: Path, target: Path) -> None:
  """Renames the complete directory `new` to `target`; an existing target is moved aside first and
  deleted afterwards (between the two renames, for an instant, no target exists)."""
  old = None
  if target.exists():
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.rename(target, old / target.name)
  try:
    os.rename(new, target)
  except OSError:
    if old is not None:
      os.rename(old / target.name, target)
    raise
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)
