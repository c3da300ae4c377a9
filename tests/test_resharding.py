"""A checkpoint written on N devices resumes on M: 1 device -> 8 devices with tables split over a `model`
axis -> 4 devices, data parallel, the data read from the shards or held on the devices in turn
(data.placement); the run ends where an uninterrupted one-device run ends."""

import jax
import numpy as np

from test_e2e import _final_params
from helpers import launch_here


def _run(workdir, data_root, devices, steps, *sets):
  """A launch.py run in this process on the first `devices` of the 8 (train.devices)."""
  args = [
    "--experiment",
    "commercial:tiny",
    "--model",
    "deepfm",
    "--workdir",
    str(workdir),
    "--set",
    f"data.dir={data_root}",
    "--set",
    f"train.steps={steps}",
    "--set",
    "train.eval_every=100",
    "--set",
    "train.lr_schedule=constant",
    "--set",
    f"train.devices={devices}",
  ]  # the legs differ in length
  run = launch_here(args + [a for s in sets for a in ("--set", s)])
  assert run.returncode == 0, run.stderr[-3000:]
  return run.stdout


def test_checkpoint_moves_between_device_counts(tmp_path, data_root):
  w = tmp_path / "moved"
  # The legs also change data.placement: the batches, and so the run, are the same either way.
  _run(w, data_root, 1, 2, "data.placement=host")
  out = _run(w, data_root, 8, 4, "train.mesh=data=4,model=2", "data.placement=device")  # tables padded, split
  assert "resumed from step 2" in out and "on 8 device(s)" in out
  out = _run(w, data_root, 4, 6, "data.placement=host")
  assert "resumed from step 4" in out and "on 4 device(s)" in out
  _run(tmp_path / "ref", data_root, 1, 6)  # data.placement=auto: device here
  step, moved = _final_params(w)
  ref_step, ref = _final_params(tmp_path / "ref")
  assert step == ref_step == 6
  la, lb = jax.tree.leaves(moved["params"]), jax.tree.leaves(ref["params"])
  assert [x.shape for x in la] == [x.shape for x in lb]
  # Equal up to the order of the sums over devices (a skipped or repeated batch moves every weight by
  # about the learning rate, 4e-3 here).
  for a, b in zip(la, lb):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=2e-4)


def test_train_devices_picks_the_first_devices_or_says_how_many_there_are(tmp_path, data_root):
  out = _run(tmp_path / "two", data_root, 2, 2)
  assert "on 2 device(s)" in out
  run = launch_here(
    [
      "--experiment",
      "commercial:tiny",
      "--workdir",
      str(tmp_path / "nine"),
      "--set",
      f"data.dir={data_root}",
      "--set",
      "train.devices=9",
    ]
  )
  assert run.returncode == 2
  assert (
    run.stderr.strip() == "error: train.devices=9, but this process has 8 devices; give at most 8 (0 = every device)"
  )
  assert not (tmp_path / "nine" / "checkpoints").exists()
