"""Helpers the tests share: read back every record of a converted split; train a model briefly through
the trainer's own pieces (state from shapes, the jitted step, the grain pipeline, evaluate)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

import launch as launch_script

from mian_jax.data import records
from mian_jax.schema import FeatureSchema

ROOT = Path(__file__).resolve().parents[1]


def decode_split(directory: Path, meta: dict, split: str) -> dict[str, np.ndarray]:
  from array_record.python import array_record_module

  schema = FeatureSchema.from_dict(meta["schema"])
  blocks = []
  for name in meta["files"][split]:
    reader = array_record_module.ArrayRecordReader(str(Path(directory) / name))
    blocks += [records.decode_block(schema, r) for r in reader.read_all()]
    reader.close()
  return records.concat(blocks)


def train_briefly(name: str, config, source, steps: int) -> tuple[list[float], dict]:
  """(losses, test metrics) after `steps` steps of model `name` on one device, through the trainer's Run."""
  import copy

  from mian_jax.train import partition
  from mian_jax.train.run import Run

  config = copy.deepcopy(config)
  config.model.name, config.train.steps, config.train.seed = name, steps, 0
  run = Run.build(config, src=source, mesh=partition.make_mesh(jax.devices()[:1]))
  state, it = run.init_state(), run.train_iterator()
  losses = []
  for _ in range(steps):
    state, metrics = run.train_step(state, partition.to_global(next(it), run.mesh))
    losses.append(float(metrics["loss"]))
  return losses, run.evaluate(state.params)


def xla_flags(devices: int | None = None) -> str:
  """XLA_FLAGS for a launch.py process a test starts: the suite's compile flags (conftest.py), and
  `devices` fake CPU devices (None: one, the default)."""
  flags = os.environ.get("MIAN_JAX_TEST_XLA_FLAGS", "")
  return f"{flags} --xla_force_host_platform_device_count={devices}".strip() if devices else flags


def launch_here(argv: list[str], cache: Path | None = None) -> subprocess.CompletedProcess:
  """`python launch.py ARGV` run in this process (launch.main, the same code path as the script): no
  interpreter start and no imports, so a test that only needs a finished run costs its training alone.
  The run uses one device (train.devices=1, unless ARGV sets train.devices or train.mesh), as a launch.py
  process of the tests does; `cache` is its MIAN_JAX_CACHE. What it prints comes back as a
  CompletedProcess. Tests of signals, kills, exit codes of the process itself, multi-host and full disks
  start real processes instead (`launch` with real=True, or their own)."""
  if not any(a.startswith(("train.devices=", "train.mesh=")) for a in argv):
    argv = [*argv, "--set", "train.devices=1"]
  out, err = io.StringIO(), io.StringIO()
  saved = os.environ.get("MIAN_JAX_CACHE")
  if cache is not None:
    os.environ["MIAN_JAX_CACHE"] = str(cache)
  try:
    with contextlib.chdir(ROOT), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      try:
        code = launch_script.main(argv)
      except SystemExit as e:  # argparse's usage errors
        code = e.code if isinstance(e.code, int) else 2
  finally:
    if cache is not None:
      os.environ.pop("MIAN_JAX_CACHE") if saved is None else os.environ.__setitem__("MIAN_JAX_CACHE", saved)
  return subprocess.CompletedProcess(["launch.py", *argv], code, out.getvalue(), err.getvalue())


def launch(tmp_path: Path, experiment: str, *sets: str, extra: tuple[str, ...] = (), real: bool = False):
  """`launch.py --experiment EXPERIMENT --workdir tmp/w --set ... [extra]` on one CPU device, with its
  converted data cached under tmp/cache: in this process (launch_here), or as a real process (`real`)."""
  args = ["--experiment", experiment, "--workdir", str(tmp_path / "w")]
  args += [a for s in sets for a in ("--set", s)] + list(extra)
  if not real:
    return launch_here(args, cache=tmp_path / "cache")
  env = {**os.environ, "XLA_FLAGS": xla_flags(), "JAX_PLATFORMS": "cpu", "MIAN_JAX_CACHE": str(tmp_path / "cache")}
  return subprocess.run(
    [sys.executable, str(ROOT / "launch.py"), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
  )


def plant(src: Path, target: Path, split: str, record: int, edit) -> Path:
  """A copy of the data set `src` (same cache name, under `target`) whose `split` shard 0 has block
  `record` edited: `edit(block)` changes the decoded block in place, or returns the bytes to store."""
  import json
  import shutil

  from array_record.python import array_record_module

  from mian_jax.data import shards

  shutil.copytree(src, target / src.name)
  meta = json.loads((src / "meta.json").read_text())
  schema = FeatureSchema.from_dict(meta["schema"])
  path = target / src.name / meta["files"][split][0]
  reader = array_record_module.ArrayRecordReader(str(path))
  blobs = reader.read_all()
  reader.close()
  block = records.decode_block(schema, blobs[record])
  raw = edit(block)
  blobs[record] = raw if raw is not None else records.encode_block(schema, block)
  shards.write_records(path, blobs)
  # Sealed again, as the writer of such records would have: the digests check that files are as written.
  unsealed = {k: v for k, v in meta.items() if k not in ("digests", "meta_sha256")}
  shards.write_text(target / src.name / "meta.json", json.dumps(shards.seal(target / src.name, unsealed), indent=1))
  return path
