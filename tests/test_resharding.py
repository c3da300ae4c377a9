"""A checkpoint written on N devices resumes on M: 1 device -> 8 devices with tables split over a `model`
axis -> 4 devices, data parallel; the run ends where an uninterrupted one-device run ends."""

import os
import subprocess
import sys

import jax
import numpy as np

from test_e2e import ROOT, _final_params
from helpers import xla_flags


def _run(workdir, data_root, devices, steps, *sets):
  cmd = [sys.executable, str(ROOT / "launch.py"), "--experiment", "commercial:tiny", "--model", "deepfm",
         "--workdir", str(workdir), "--set", f"data.dir={data_root}", "--set", f"train.steps={steps}",
         "--set", "train.eval_every=100", "--set", "train.lr_schedule=constant"]  # the legs differ in length
  cmd += [a for s in sets for a in ("--set", s)]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags(devices)}
  run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  return run.stdout


def test_checkpoint_moves_between_device_counts(tmp_path, data_root):
  w = tmp_path / "moved"
  _run(w, data_root, 1, 2)
  out = _run(w, data_root, 8, 4, "train.mesh=data=4,model=2")  # tables padded to 2 rows and split
  assert "resumed from step 2" in out and "on 8 device(s)" in out
  out = _run(w, data_root, 4, 6)
  assert "resumed from step 4" in out and "on 4 device(s)" in out
  _run(tmp_path / "ref", data_root, 1, 6)
  step, moved = _final_params(w)
  ref_step, ref = _final_params(tmp_path / "ref")
  assert step == ref_step == 6
  la, lb = jax.tree.leaves(moved["params"]), jax.tree.leaves(ref["params"])
  assert [x.shape for x in la] == [x.shape for x in lb]
  # Equal up to the order of the sums over devices (a skipped or repeated batch moves every weight by
  # about the learning rate, 4e-3 here).
  for a, b in zip(la, lb):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=2e-4)
