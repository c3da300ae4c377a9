"""SIGTERM and Ctrl-C outside the training loop, with real processes: while the data set is generated (the
spawned shard writers are stopped, finished shards stay, one `error:` line, exit 75), at start-up, and
while exporting (nothing half-written is left). In the training loop: test_faults.py."""

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_e2e import ROOT, _launch, _run
from helpers import xla_flags

# Many small shards, so that generation is still running when the signal comes.
GENERATE = ("--experiment", "commercial", "--set", "data.scale=0.02", "--set", "data.shard_samples=2048")


def _start(tmp_path: Path, *args: str) -> subprocess.Popen:
  cmd = [
    sys.executable,
    str(ROOT / "launch.py"),
    "--workdir",
    str(tmp_path / "w"),
    "--set",
    f"data.dir={tmp_path / 'data'}",
    *args,
  ]
  env = {**os.environ, "XLA_FLAGS": xla_flags(), "JAX_PLATFORMS": "cpu"}
  return subprocess.Popen(
    cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
  )  # its own process group, as a terminal's foreground job


def _children(pid: int) -> set[int]:
  out = set()
  for task in Path(f"/proc/{pid}/task").glob("*"):
    with contextlib.suppress(OSError):  # the thread ended while we looked
      out |= {int(c) for c in (task / "children").read_text().split()}
  return out


def _alive(pid: int) -> bool:
  try:
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
  except OSError:
    return False
  return state != "Z"


def _finished_shards(data: Path) -> dict[str, int]:
  return {str(p.relative_to(data)): p.stat().st_mtime_ns for p in data.rglob("*.array_record")}


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_a_signal_while_generating_stops_the_writers_and_keeps_finished_shards(tmp_path, how):
  proc = _start(tmp_path, *GENERATE)
  deadline = time.time() + 300
  while not list((tmp_path / "data").rglob("shard-*.stats.json")) and time.time() < deadline:
    assert proc.poll() is None, proc.communicate()
    time.sleep(0.05)
  workers = _children(proc.pid)
  assert workers, "no shard writer processes"
  kept = _finished_shards(tmp_path / "data")
  if how == "SIGTERM":
    proc.send_signal(signal.SIGTERM)
  else:  # Ctrl-C in a terminal: SIGINT to the whole foreground process group, workers included
    os.killpg(proc.pid, signal.SIGINT)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 75, (out, err)
  lines = [l for l in err.strip().splitlines() if l.strip() and not l.startswith("generating")]
  assert lines == [l for l in lines if l.startswith("error: ")] and len(lines) == 1, err
  assert f"error: stopped by {how} while building the data set" in lines[0]
  assert "Traceback" not in err and "leaked" not in err
  deadline = time.time() + 30
  while any(_alive(p) for p in workers) and time.time() < deadline:
    time.sleep(0.1)
  assert not [p for p in workers if _alive(p)], "shard writers outlived the run"
  after = _finished_shards(tmp_path / "data")
  assert {k: v for k, v in after.items() if k in kept} == kept  # finished shards untouched
  assert not list((tmp_path / "data").rglob("meta.json"))  # the data set is not taken as complete


def test_sigterm_at_start_up_is_one_line_and_exit_75(tmp_path):
  proc = _start(tmp_path, "--experiment", "commercial:tiny")
  time.sleep(random.Random(0).uniform(1.0, 2.0))  # imports, configuration, generation
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 75, (out, err)
  assert err.strip().splitlines()[-1].startswith("error: stopped by SIGTERM while "), err
  assert "Traceback" not in err


def test_sigterm_while_exporting_leaves_no_partial_export(tmp_path, data_root):
  w = tmp_path / "w"
  run = _run(w, data_root, "--set", "train.steps=4")
  assert run.returncode == 0, run.stderr
  out_dir = tmp_path / "export"
  proc = _launch(w, data_root, "--export", str(out_dir), wait=False)
  for line in proc.stdout:  # its export phase has begun: from here on a signal is handled
    if line.startswith("exporting the best checkpoint of "):
      break
  time.sleep(0.5)  # restoring the checkpoint, lowering, writing
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode in (0, 75), out
  if proc.returncode == 75:
    assert "error: stopped by SIGTERM while exporting" in out or "while restoring the checkpoint" in out
    assert not out_dir.exists()
  else:  # it finished first: then it is complete
    assert (out_dir / "manifest.json").exists()
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".export")] == []


def test_a_signal_during_a_checkpoint_read_is_raised_when_the_read_ends():
  """Orbax reads in coroutines, which an exception raised among them leaves half torn down: inside
  `interrupts.held` (Checkpoints.restore / read_config) the signal waits for the block's end."""
  from mian_jax import interrupts

  previous = interrupts.install()
  try:
    reached = []
    with pytest.raises(interrupts.Interrupted) as e:
      with interrupts.phase("restoring the checkpoint"), interrupts.held():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler has run by now: it only recorded the signal
        reached.append(True)
    assert reached == [True] and e.value.signum == signal.SIGTERM and e.value.during == "restoring the checkpoint"
    assert signal.getsignal(signal.SIGTERM) is interrupts._raise  # the run's handlers are back
  finally:
    interrupts.restore(previous)


def test_a_signal_whose_exception_python_dropped_is_raised_at_the_next_phase():
  """A signal handled inside a garbage-collector callback (JAX registers one) has its exception printed and
  dropped by Python: it is raised again when the run names its next phase, or stops the training loop."""
  from mian_jax import interrupts

  previous = interrupts.install()
  try:
    with pytest.raises(interrupts.Interrupted):  # the handler's exception, which a gc callback would drop
      interrupts._raise(signal.SIGTERM, None)
    with pytest.raises(interrupts.Interrupted) as e:
      interrupts.set_phase("building the data set")
    assert e.value.during == "starting" and e.value.signum == signal.SIGTERM
    with interrupts.Deferred() as stop:  # not delivered yet: the training loop stops after its step
      assert stop.signal == signal.SIGTERM
    interrupts.set_phase("the final evaluation")  # taken by the loop: nothing raised again
  finally:
    interrupts.restore(previous)


def test_a_signal_while_or_after_an_output_is_put_in_place_no_longer_stops_the_run():
  """`interrupts.commit`: SIGTERM during the renames of --export / --predict, or after them, leaves the run to
  exit 0 with its output complete (exit 75 always means nothing was replaced); a dropped signal from before is
  dropped for good; a second Ctrl-C still ends the process (not tried here: it exits)."""
  from mian_jax import interrupts

  previous = interrupts.install()
  try:
    done = []

    def put_in_place():
      os.kill(os.getpid(), signal.SIGTERM)  # delivered while the "renames" run
      done.append(True)
      return "out"

    interrupts._pending.append(interrupts.Interrupted(signal.SIGTERM, "exporting"))  # dropped earlier
    assert interrupts.commit(put_in_place) == "out" and done == [True]
    os.kill(os.getpid(), signal.SIGTERM)  # after: the process only prints and exits
    interrupts.check()  # nothing pending: launch.py returns 0
    interrupts.set_phase("printing")
  finally:
    interrupts.restore(previous)
  seen = []  # without install() (a library caller): its own handlers stay
  old = signal.signal(signal.SIGTERM, lambda *a: seen.append(a[0]))
  try:
    assert interrupts.commit(lambda: os.kill(os.getpid(), signal.SIGTERM) or 1) == 1
    assert seen == [signal.SIGTERM] and signal.getsignal(signal.SIGTERM) is not interrupts._after_commit
  finally:
    signal.signal(signal.SIGTERM, old)
