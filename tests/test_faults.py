"""Faults, with real processes: SIGKILL at ten random moments (also while a checkpoint is being written),
SIGTERM, Ctrl-C and a second Ctrl-C, each followed by a restart, end with parameters bit for bit equal to
an uninterrupted run; a second run on a busy workdir is refused and a killed run's lock is not stuck; a
checkpoint of another model or data set is refused; a non-finite step stops the run naming its batch's
records, or is skipped and counted."""

import random
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import plant
from mian_jax.data import pipeline
from test_e2e import _assert_same_params, _final_params, _launch, _run

# DIN: the trainer's state in all its kinds (embedding tables, a dense network, Dice's running moments, Adam's
# slots, the RNG, the data position) at about two thirds of MIAN's start-up cost per process (tracing, loading
# compiled programs); these tests start 17 processes. The trainer saves and restores the state as one pytree
# whatever the model (restoring checks every array's name and shape), so what is checked here holds for MIAN.
RUN = (
  "--model",
  "din",
  "--set",
  "train.steps=100",
  "--set",
  "train.checkpoint_every=2",
  "--set",
  "train.log_every=2",
  "--set",
  "train.eval_every=50",
  "--set",
  "train.keep_checkpoints=2",
)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_root):
  """(workdir, final state) of the uninterrupted run every interrupted one must reproduce."""
  workdir = tmp_path_factory.mktemp("uninterrupted")
  # A real process, as the killed ones are (bit-for-bit alike), saving only at its evaluations (steps 50 and
  # 100): how often a run saves must not change what it computes, and 48 fewer saves are ~20 s less.
  ref = _launch(workdir, data_root, *RUN, "--set", "train.checkpoint_every=50")
  assert ref.returncode == 0, ref.stderr
  return workdir, _final_params(workdir)[1]


def _latest(workdir: Path) -> int:
  ckpts = workdir / "checkpoints"
  steps = [int(p.name) for p in ckpts.iterdir() if p.name.isdigit()] if ckpts.exists() else []
  return max(steps, default=-1)


def _wait_for_progress(proc, workdir: Path, since: int) -> bool:
  """Waits until the run has written a checkpoint newer than `since`; False if it ended first."""
  deadline = time.time() + 300
  while proc.poll() is None and _latest(workdir) <= since and time.time() < deadline:
    time.sleep(0.02)
  return proc.poll() is None


def test_sigkill_at_ten_random_moments_resumes_bit_identically(tmp_path, data_root, uninterrupted):
  rng = random.Random(0)
  w = tmp_path / "killed"
  kills = half_written = 0
  while kills < 10:
    proc = _launch(w, data_root, *RUN, wait=False)
    if not _wait_for_progress(proc, w, _latest(w)):
      break
    time.sleep(rng.uniform(0.0, 0.12))  # anywhere in the next steps, often in the middle of a save
    if kills == 4:  # meanwhile, a second run on the same workdir is refused
      busy = _launch(w, data_root, *RUN)
      assert busy.returncode == 2 and "is in use by another run (pid " in busy.stderr, busy.stderr
    proc.kill()
    proc.wait()
    kills += 1
    half_written += any("tmp" in p.name for p in (w / "checkpoints").iterdir())
  assert kills == 10, "the run finished before it was killed ten times"
  final = _launch(w, data_root, *RUN)  # the killed runs' locks are gone with them
  assert final.returncode == 0, final.stderr
  assert "resumed from step" in final.stdout
  assert not [p.name for p in (w / "checkpoints").iterdir() if not p.name.isdigit()], (
    "a half-written checkpoint was left"
  )
  step, params = _final_params(w)
  assert step == 100, f"{half_written} kill(s) left a half-written checkpoint"
  _assert_same_params(uninterrupted[1], params)


def test_sigterm_ctrl_c_and_a_second_ctrl_c_resume_bit_identically(tmp_path, data_root, uninterrupted):
  w = tmp_path / "stopped"
  # The legs read the data from the shards (host) or hold it on the device in turn: the same batches.
  for signals, placement in (
    ([signal.SIGTERM], "host"),
    ([signal.SIGINT], "device"),
    ([signal.SIGINT, signal.SIGINT], "host"),
  ):
    proc = _launch(w, data_root, *RUN, "--set", f"data.placement={placement}", wait=False)
    assert _wait_for_progress(proc, w, _latest(w))
    for s in signals:
      proc.send_signal(s)
      time.sleep(0.01)
    out, _ = proc.communicate(timeout=300)
    if len(signals) == 1:
      assert proc.returncode == 75, out
      name = "SIGTERM" if signals[0] == signal.SIGTERM else "Ctrl-C"
      stopped_at = int(out.split(f"interrupted by {name} at step ")[1].split(" ")[0])
      assert f"checkpoint saved in {w / 'checkpoints'}" in out
      assert _latest(w) == stopped_at  # saved where it stopped: no step is repeated on resume
    else:  # out at once (130), or already through the first signal's save (75)
      assert proc.returncode in (75, 130), out
      if proc.returncode == 130:
        assert "error: stopped at once by a second Ctrl-C" in out
  final = _launch(w, data_root, *RUN)
  assert final.returncode == 0, final.stderr
  _assert_same_params(uninterrupted[1], _final_params(w)[1])


def test_a_checkpoint_of_another_model_or_data_set_is_refused(tmp_path, data_root, uninterrupted):
  w = tmp_path / "other"
  shutil.copytree(uninterrupted[0], w)
  before = sorted((p.name, p.stat().st_mtime) for p in (w / "checkpoints").rglob("*"))
  run = _run(w, data_root, *RUN, "--model", "deepfm", "--set", "model.embed_dim=8", "--set", "data.seed=1")
  assert run.returncode == 2
  error = run.stderr.strip().splitlines()[-1]
  assert error.startswith(f"error: {w} holds checkpoints of another run (")
  assert "model.name: checkpoint din, this run deepfm" in error and "model.embed_dim: checkpoint 4, this run 8" in error
  assert "data: checkpoint commercial-" in error and "--fresh" in error
  assert sorted((p.name, p.stat().st_mtime) for p in (w / "checkpoints").rglob("*")) == before


def test_a_non_finite_step_stops_naming_its_records_or_is_skipped(tmp_path, data_root, tiny_source):
  def huge(block):
    block["activity"][:] = 3e38  # finite in the shard; overflows to inf inside the network

  # A block of shard 0 that one epoch reads (24 steps of 256 = 192 of the 195 blocks): in exactly one batch.
  shard0 = tiny_source.meta["files"]["train"][0]
  record = next(
    r for batch in range(24) for f, r in pipeline.batch_sources(tiny_source, 0, batch, 8) if Path(f).name == shard0
  )
  path = plant(tiny_source.directory, tmp_path / "data", "train", record, huge)
  sets = (
    "--set",
    f"data.dir={tmp_path / 'data'}",
    "--set",
    "train.steps=24",
    "--set",
    "train.checkpoint_every=4",
    "--set",
    "train.eval_every=24",
  )
  stop = _run(tmp_path / "stop", data_root, *sets)
  assert stop.returncode == 3, stop.stderr
  error = stop.stderr.strip().splitlines()[-1]
  assert error.startswith("error: non-finite loss or gradients at step ") and f"{path.name} record {record}" in error
  bad_step = int(error.split(" at step ")[1].split(" ")[0])
  kept = (bad_step - 1) // 4 * 4
  assert (f"the last checkpoint (step {kept}) is kept" if kept else "no checkpoint was written yet") in error
  assert _latest(tmp_path / "stop") == (kept or -1)
  if kept:
    _, state = _final_params(tmp_path / "stop")
    assert all(np.isfinite(np.asarray(x)).all() for x in __import__("jax").tree.leaves(state))
  skip = _run(tmp_path / "skip", data_root, *sets, "--set", "train.on_nonfinite=skip_batch")
  assert skip.returncode == 0, skip.stderr
  assert "non-finite loss or gradients (train.on_nonfinite=skip_batch)" in skip.stdout
  skipped = int(skip.stdout.split("skipped ")[-1].split(" step(s)")[0])
  assert skipped == 1
  _, state = _final_params(tmp_path / "skip")
  assert all(np.isfinite(np.asarray(x)).all() for x in __import__("jax").tree.leaves(state))
