"""Nothing lost, whatever is in the folders: --export, --predict --out, a run's and a sweep's workdir are
written only when new, empty or the project's own; --fresh moves the previous run aside; a torn
metrics.jsonl line, an unreadable or non-finite checkpoint and a torn result.json do not stop a rerun; a
refused resume leaves the finished run's result.json. Real runs (launch.py processes) and real Orbax
checkpoints; the in-process checks use the trainer's own functions."""

import json
import os
import re
import shutil
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import experiments
from mian_jax import export, files, predict, sweep
from mian_jax.errors import DataError
from mian_jax.errors import RunError
from mian_jax.train import loop
from mian_jax.train.run import Run
from mian_jax.train.checkpoint import Checkpoints
from test_e2e import _run

RUN = (
  "--set",
  "train.steps=24",
  "--set",
  "train.checkpoint_every=8",
  "--set",
  "train.eval_every=8",
  "--set",
  "train.keep_checkpoints=3",
)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_root):
  """A finished run with checkpoints at steps 8, 16 and 24."""
  w = tmp_path_factory.mktemp("finished") / "w"
  run = _run(w, data_root, *RUN)
  assert run.returncode == 0, run.stderr
  assert sorted(int(p.name) for p in (w / "checkpoints").iterdir() if p.name.isdigit()) == [8, 16, 24]
  return w


def _copy(finished: Path, tmp_path: Path) -> Path:
  w = tmp_path / "w"
  shutil.copytree(finished, w)
  (w / ".lock").unlink(missing_ok=True)
  return w


def _snapshot(folder: Path) -> dict[str, bytes]:
  return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _config(data_root, *sets: str):
  config = experiments.get_config("commercial:tiny")
  config.data.dir = str(data_root)
  from mian_jax.config import apply_overrides

  apply_overrides(config, [s for s in sets if "=" in s])
  return config


def _error_line(stderr: str) -> str:
  lines = [l for l in stderr.strip().splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), stderr
  return lines[0]


def test_export_into_the_workdir_is_refused_and_the_run_is_kept(finished, tmp_path, data_root):
  w = _copy(finished, tmp_path)
  before = _snapshot(w)
  run = _run(w, data_root, *RUN, "--export", str(w))
  assert run.returncode == 2
  assert "not an export's" in _error_line(run.stderr)
  assert _snapshot(w) == before


def test_export_writes_only_into_new_empty_or_earlier_export_folders(tmp_path):
  foreign = tmp_path / "mine"
  foreign.mkdir()
  (foreign / "notes.txt").write_text("keep me")
  with pytest.raises(files.NotOurs, match=r"mine holds files that are not an export's \(e.g. notes.txt\)"):
    export.claim(foreign)
  (tmp_path / "empty").mkdir()
  export.claim(tmp_path / "empty")
  export.claim(tmp_path / "new")
  earlier = tmp_path / "earlier"
  earlier.mkdir()
  (earlier / export.MANIFEST_FILE).write_text(json.dumps({"format": export.FORMAT}))
  export.claim(earlier)
  (tmp_path / "a_file").write_text("x")
  with pytest.raises(files.NotOurs, match="is a file"):
    export.claim(tmp_path / "a_file")
  assert (foreign / "notes.txt").read_text() == "keep me"


def test_predict_never_overwrites_a_file_it_did_not_write(finished, tmp_path, data_root):
  theirs = tmp_path / "theirs.csv"
  theirs.write_text("id,name\n1,a\n")
  run = _run(finished, data_root, "--predict", str(data_root), "--out", str(theirs))
  assert run.returncode == 2
  assert "is not a --predict output" in _error_line(run.stderr)
  assert theirs.read_text() == "id,name\n1,a\n"
  earlier = tmp_path / "earlier.csv"
  for ours in ("row,probability\n0,0.5\n", "row,user,probability\n0,u7,0.123456\n1,u8,0.5\n", "row,user,probability\n"):
    earlier.write_text(ours)
    predict._check_out(earlier)  # an earlier output may be replaced
  for mine in (
    "row,name\n1,alice\n",
    "row,user,probability,note\n0,u,0.5,x\n",
    "row,user,probability\n3,u,7\n",
    "row,user,probability\n0,u,high\n",
    "row, user\n",
  ):
    earlier.write_text(mine)  # a user's own file that merely starts with `row,`
    with pytest.raises(DataError, match="is not a --predict output"):
      predict._check_out(earlier)
  with pytest.raises(DataError, match="is a folder"):
    predict._check_out(tmp_path)


def test_a_folder_holding_other_files_is_not_used_as_a_workdir_or_sweep_root(tmp_path, data_root):
  home = tmp_path / "home"
  home.mkdir()
  (home / "thesis.tex").write_text("months of work")
  run = _run(home, data_root, *RUN)
  assert run.returncode == 2
  assert "home holds files that are not a run's (e.g. thesis.tex)" in _error_line(run.stderr)
  assert sorted(p.name for p in home.iterdir()) == ["thesis.tex"]
  with pytest.raises(files.NotOurs, match="not a sweep's"):
    sweep.run("commercial:tiny", [{"model.name": "lr"}], home, [])
  assert sorted(p.name for p in home.iterdir()) == ["thesis.tex"]


def test_fresh_moves_the_previous_run_aside(finished, tmp_path, data_root):
  w = _copy(finished, tmp_path)
  old = _snapshot(w / "checkpoints")
  run = _run(w, data_root, *RUN, "--fresh", "--set", "train.steps=8")
  assert run.returncode == 0, run.stderr
  assert "resumed" not in run.stdout
  (moved,) = [p for p in w.iterdir() if p.name.startswith("previous-")]
  assert f"--fresh: the previous run's files are in {moved}" in run.stdout
  assert _snapshot(moved / "checkpoints") == old
  assert {"metrics.jsonl", "result.json", "config.json"} <= {p.name for p in moved.iterdir()}
  assert sorted(p.name for p in (w / "checkpoints").iterdir() if p.name.isdigit()) == ["8"]


def test_a_torn_log_line_and_unreadable_checkpoints_do_not_stop_a_rerun(finished, tmp_path, data_root):
  w = _copy(finished, tmp_path)
  with (w / "metrics.jsonl").open("a") as f:  # a full disk in the middle of a write
    f.write('{"step": 13, "split": "tr')
  (w / "result.json").unlink()  # as when the run was stopped before its end
  state24 = w / "checkpoints" / "24" / "state"
  largest = max((p for p in state24.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  with largest.open("r+b") as f:
    f.truncate(10)
  (w / "checkpoints" / "16" / "state" / "_METADATA").unlink()
  run = _run(w, data_root, *RUN, "--set", "train.steps=32")
  assert run.returncode == 0, run.stderr
  assert f"dropped 1 unreadable line(s) of {w / 'metrics.jsonl'}" in run.stdout
  assert "checkpoint step 24 could not be read (" in run.stdout
  assert "checkpoint step 16 could not be read (" in run.stdout
  assert "resumed from step 8" in run.stdout and "another run" not in run.stdout + run.stderr
  damaged = sorted(p.name.split("-")[0] for p in (w / "checkpoints.damaged").iterdir() if p.is_dir())
  assert damaged == ["16", "24"]
  events = [json.loads(l) for l in (w / "metrics.jsonl").read_text().splitlines()]  # every line readable
  assert max(e["step"] for e in events) == 32
  assert sorted(int(p.name) for p in (w / "checkpoints").iterdir() if p.name.isdigit())[-1] == 32


def test_eval_falls_back_from_an_unreadable_best_checkpoint(finished, tmp_path, data_root):
  w = _copy(finished, tmp_path)
  config = _config(data_root, *RUN)
  best = Checkpoints(w / "checkpoints").best_step()
  (w / "checkpoints" / str(best) / "state" / "_METADATA").unlink()
  *_, step = Run.restore(config, w)
  assert step != best and step in (8, 16, 24)
  assert (w / "checkpoints" / str(best)).exists()  # --eval / --export / --predict change nothing


def test_a_read_lists_the_steps_again_when_the_one_it_reads_is_removed(
  finished, tmp_path, data_root, monkeypatch, capsys
):
  """A training run keeps its newest train.keep_checkpoints steps: a reader beside it (--eval, --predict,
  --export) may have its step removed mid-read. Here the first two steps it reads are removed just as it
  reads them (shutil.rmtree, as the trainer's retention does): it lists the steps again and reads the one
  left, reporting no damage."""
  w = _copy(finished, tmp_path)
  real, removed = Checkpoints.restore, []

  def removed_as_read(self, step, target):
    if len(removed) < 2:
      removed.append(step)
      shutil.rmtree(w / "checkpoints" / str(step))
    return real(self, step, target)

  monkeypatch.setattr(Checkpoints, "restore", removed_as_read)
  *_, step = Run.restore(_config(data_root, *RUN), w)
  assert len(set(removed)) == 2 and step not in removed and step in (8, 16, 24)
  printed = "".join(capsys.readouterr())
  assert "could not be read" not in printed and "removed" not in printed, printed


def _state_tree(w: Path, step: int):
  with ocp.CheckpointManager((w / "checkpoints").absolute(), item_names=("state", "data", "config")) as m:
    out = m.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), data=ocp.args.JsonRestore(), config=ocp.args.JsonRestore()
      ),
    )
  return jax.tree.map(np.asarray, out.state), out.data, out.config


def _save_scaled(w: Path, step: int, factor: float) -> int:
  """A checkpoint at step + 1 whose parameters are step's times `factor` (what flipped exponent bits do)."""
  state, data, config = _state_tree(w, step)
  state["params"] = jax.tree.map(
    lambda x: (x * factor).astype(x.dtype) if np.issubdtype(x.dtype, np.floating) else x, state["params"]
  )
  ckpt = Checkpoints(w / "checkpoints")
  ckpt.save(step + 1, state, data, config)
  ckpt.close()
  return step + 1


def test_non_finite_checkpoints_are_skipped_and_a_diverging_resume_blames_the_checkpoint(finished, tmp_path, data_root):
  w = _copy(finished, tmp_path)
  (w / "result.json").unlink()
  nan_step = _save_scaled(w, 24, np.nan)
  run = _run(w, data_root, *RUN, "--set", "train.steps=26")
  assert run.returncode == 0, run.stderr
  assert f"checkpoint step {nan_step} could not be read (it holds non-finite values)" in run.stdout
  assert "resumed from step 24" in run.stdout
  w2 = _copy(finished, tmp_path / "huge")
  (w2 / "result.json").unlink()
  huge = _save_scaled(w2, 24, 1e30)
  run = _run(w2, data_root, *RUN, "--set", "train.steps=40")
  assert run.returncode == 3
  line = _error_line(run.stderr)
  assert f"the first step after resuming from checkpoint step {huge}: that checkpoint may be damaged" in line
  assert "check that data" not in line


def test_a_refused_resume_keeps_the_finished_runs_result(finished, tmp_path, data_root):
  w = _copy(finished, tmp_path)
  before = _snapshot(w)
  config = _config(data_root, *RUN)
  config.model.name = "din"
  with pytest.raises(RunError, match="holds checkpoints of another run"):
    loop.train_and_evaluate(config, w)
  after = _snapshot(w)
  assert after.pop(".lock", b"") in (b"",) and before == after


def test_a_torn_trial_result_reruns_the_trial_instead_of_stopping_the_sweep(tmp_path):
  trial = tmp_path / "name=lr"
  trial.mkdir()
  sets = ["model.name=lr"]
  files.write_json(trial / "trial.json", {"overrides": {"model.name": "lr"}, "sets": sets})
  (trial / "result.json").write_text('{"auc": 0.7')
  assert sweep.is_sweep(tmp_path)
  assert not sweep._finished(trial, sets)
  assert sweep._row("name=lr", {"model.name": "lr"}, trial, 0, "cpu:0")["status"].startswith("failed")
  files.write_json(trial / "result.json", {"auc": 0.7})
  assert sweep._finished(trial, sets)


def test_atomic_writes_name_the_file_and_leave_the_old_version(tmp_path, monkeypatch):
  path = tmp_path / "result.json"
  files.write_json(path, {"auc": 0.5})

  def full_disk(fd):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(os, "fsync", full_disk)
  with pytest.raises(OSError) as e:
    files.write_json(path, {"auc": 0.9})
  assert e.value.filename == str(path) and "No space left" in str(e.value)
  assert json.loads(path.read_text()) == {"auc": 0.5}
  assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_result_json_is_replaced_never_deleted(finished, tmp_path, data_root):
  """A rerun of a finished run trains nothing and leaves result.json byte-identical (its rates and wall
  time included); a continuation that fails before its end leaves the finished run's result.json."""
  w = _copy(finished, tmp_path)
  before = (w / "result.json").read_bytes()
  rerun = _run(w, data_root, *RUN)
  assert rerun.returncode == 0, rerun.stderr
  assert "resumed from step 24" in rerun.stdout and "final test auc=" in rerun.stdout
  assert (w / "result.json").read_bytes() == before
  _save_scaled(w, 24, 1e30)  # the continuation diverges at its first step
  failed = _run(w, data_root, *RUN, "--set", "train.steps=40")
  assert failed.returncode == 3, failed.stderr
  assert (w / "result.json").read_bytes() == before


def test_files_and_exports_are_made_as_the_umask_allows(finished, tmp_path, data_root):
  """0644 / 0755 under the usual umask 022, so another account (a server) can read a run and an export."""
  assert files.file_mode() == 0o666 & ~files.umask() and files.folder_mode() == 0o777 & ~files.umask()
  files.write_json(tmp_path / "x.json", {"a": 1})
  assert (tmp_path / "x.json").stat().st_mode & 0o777 == files.file_mode()
  for name in ("result.json", "config.json"):
    assert (finished / name).stat().st_mode & 0o777 == files.file_mode(), name
  out = export.export(_config(data_root, *RUN), _copy(finished, tmp_path / "run"), tmp_path / "model")
  assert out.stat().st_mode & 0o777 == files.folder_mode()
  for p in out.rglob("*"):
    assert p.stat().st_mode & 0o777 == (files.folder_mode() if p.is_dir() else files.file_mode()), p


def test_a_damaged_data_position_is_a_damaged_checkpoint(finished, tmp_path, data_root):
  """A data position that cannot be one (a negative batch count) sets its checkpoint aside, with the reason,
  and the run resumes from the one before it; the finished run's result.json stays until the run ends."""
  w = _copy(finished, tmp_path)
  (w / "checkpoints" / "24" / "manifest.json").unlink()  # as written before manifests (which catch any edit)
  (w / "checkpoints" / "24" / "data" / "metadata").write_text('{"batches": -3, "blocks_per_batch": 8}')
  run = _run(w, data_root, *RUN, "--set", "train.steps=32")
  assert run.returncode == 0, run.stderr
  assert "checkpoint step 24 could not be read (its data position holds batches=-3" in run.stdout
  assert "resumed from step 16" in run.stdout
  assert [p.name.split("-")[0] for p in (w / "checkpoints.damaged").iterdir() if p.is_dir()] == ["24"]
  assert json.loads((w / "result.json").read_text())["step"] == 32


def test_data_positions_are_checked_against_what_they_can_hold():
  from mian_jax.data import pipeline

  assert pipeline.position_problem({"batches": 3, "blocks_per_batch": 8}) is None
  assert pipeline.position_problem({"next_index": 5}) is None and pipeline.position_problem(None) is None
  for bad in (
    {"batches": -1, "blocks_per_batch": 8},
    {"batches": 3, "blocks_per_batch": 0},
    {"batches": 2.5, "blocks_per_batch": 8},
    {"batches": True, "blocks_per_batch": 8},
    {"batches": 3},
    {"next_index": -2},
    [1, 2],
    {"batches": 1 << 70, "blocks_per_batch": 8},
  ):
    assert pipeline.position_problem(bad), bad


def test_reading_a_run_changes_nothing_in_it(finished, tmp_path, data_root):
  """--eval / --predict / --export / --plot (Run.restore) beside a run that is writing a checkpoint: the
  half-written step folder it is filling and every other file stay as they were."""
  w = _copy(finished, tmp_path)
  writing = w / "checkpoints" / "32.orbax-checkpoint-tmp-1733300000000000"  # a save in progress
  (writing / "state").mkdir(parents=True)
  (writing / "state" / "part").write_bytes(b"being written")
  before = {str(p.relative_to(w)): (p.stat().st_mtime_ns, p.is_dir()) for p in w.rglob("*")}
  *_, step = Run.restore(_config(data_root, *RUN), w)
  assert step in (8, 16, 24)
  assert (writing / "state" / "part").read_bytes() == b"being written"
  assert {str(p.relative_to(w)): (p.stat().st_mtime_ns, p.is_dir()) for p in w.rglob("*")} == before


def test_flipped_bytes_in_a_checkpoint_are_caught_by_its_manifest(finished, tmp_path, data_root):
  """Every step folder carries a manifest of its files' sizes and SHA-256: bytes flipped inside a stored
  array (the same size) make the checkpoint damaged, set aside with the file named, and the run resumes
  from the one before. A checkpoint without a manifest (written by an earlier version) restores with a
  note that it could not be verified."""
  w = _copy(finished, tmp_path)
  for step in (8, 16, 24):
    manifest = json.loads((w / "checkpoints" / str(step) / "manifest.json").read_text())
    assert "state/_METADATA" in manifest["files"] and "data/metadata" in manifest["files"]
  state24 = w / "checkpoints" / "24" / "state"
  largest = max((p for p in state24.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  data = bytearray(largest.read_bytes())
  data[len(data) // 2] ^= 0xFF
  largest.write_bytes(bytes(data))
  run = _run(w, data_root, *RUN, "--set", "train.steps=32")
  assert run.returncode == 0, run.stderr
  name = str(largest.relative_to(w / "checkpoints" / "24"))
  assert f"checkpoint step 24 could not be read ({name} does not match its checksum" in run.stdout
  assert "resumed from step 16" in run.stdout
  old = _copy(finished, tmp_path / "old")
  (old / "checkpoints" / "24" / "manifest.json").unlink()
  run = _run(old, data_root, *RUN, "--set", "train.steps=32")
  assert run.returncode == 0, run.stderr
  assert "note: checkpoint step 24 was written without a manifest of checksums" in run.stdout
  assert "resumed from step 24" in run.stdout


def test_a_zeroed_array_in_an_unverified_checkpoint_is_named_in_one_line(finished, tmp_path, data_root, capfd):
  """A checkpoint written before manifests, whose stored arrays were zeroed: the damage is found by the
  read, reported in one line naming the array (not TensorStore's spec), the checkpoint is set aside and
  the run resumes from the one before; none of the read's echoes (ignored exceptions, "Event loop is
  closed" tracebacks) reach the terminal."""
  w = _copy(finished, tmp_path)
  (w / "checkpoints" / "24" / "manifest.json").unlink()
  for p in (w / "checkpoints" / "24" / "state").glob("ocdbt.process_0/d/*"):
    p.write_bytes(bytes(p.stat().st_size))
  run = _run(w, data_root, *RUN, "--set", "train.steps=32")
  assert run.returncode == 0, run.stderr
  line = next(x for x in run.stdout.splitlines() if x.startswith("warning: checkpoint step 24"))
  assert re.search(r"could not be read \(its stored array [\w.]+ is damaged \(.+\)\); moved to ", line), line
  assert "resumed from step 16" in run.stdout
  printed = run.stdout + run.stderr + "".join(capfd.readouterr())
  assert "TensorStore" not in printed and "Traceback" not in printed and "Event loop" not in printed, printed[:2000]


def test_predict_eval_and_export_beside_a_training_run_leave_it_unharmed(tmp_path, data_root):
  """A real training process saving a checkpoint at every step while --predict, --eval and --export read
  its workdir, again and again until it ends: it finishes with exit 0, every save complete, nothing of
  Orbax's half-written folders left behind, its result.json written; and every read succeeds, even when the
  step it chose is removed by the trainer while it reads (it lists the steps again)."""
  import subprocess
  import sys
  import time

  from helpers import xla_flags
  from test_e2e import ROOT

  w = tmp_path / "w"
  cmd = [
    sys.executable,
    str(ROOT / "launch.py"),
    "--experiment",
    "commercial:tiny",
    "--workdir",
    str(w),
    "--set",
    f"data.dir={data_root}",
    "--model",
    "din",  # the trainer's state in all its kinds at a fraction of MIAN's start-up (test_faults.RUN)
    "--set",
    "train.steps=60",
    "--set",
    "train.checkpoint_every=1",
    "--set",
    "train.eval_every=20",
    "--set",
    "train.keep_checkpoints=2",
  ]
  env = {**os.environ, "XLA_FLAGS": xla_flags(), "JAX_PLATFORMS": "cpu"}
  trainer = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 300
    while not any(p.name.isdigit() for p in (w / "checkpoints").glob("*")) and trainer.poll() is None:
      assert time.time() < deadline, "no checkpoint yet"
      time.sleep(0.2)
    reads = []
    for i in range(3):  # each is a whole launch (restore, read, write elsewhere) while the trainer saves and
      # removes old steps (keep_checkpoints=2), and a new best one at each evaluation
      if trainer.poll() is not None:
        break
      converted = next(data_root.rglob("meta.json")).parent  # the data set the trainer reads
      args = [
        ("--predict", str(converted), "--out", str(tmp_path / f"p{i}.csv")),
        ("--eval",),
        ("--export", str(tmp_path / f"e{i}")),
      ][i % 3]
      reads.append(_run(w, data_root, "--model", "din", *args))
    out, err = trainer.communicate(timeout=600)
  finally:
    trainer.kill()
  assert trainer.returncode == 0, err[-3000:]
  assert reads  # at least one read began while the trainer ran
  assert all(r.returncode == 0 for r in reads), [r.stderr[-500:] for r in reads]
  left = [p.name for p in (w / "checkpoints").iterdir() if "tmp" in p.name]
  assert not left, left
  assert json.loads((w / "result.json").read_text())["step"] == 60


def test_plot_writes_where_out_says_and_a_failed_picture_write_names_its_file(finished, tmp_path, data_root):
  """--plot gim reads the checkpoints only: with --out it writes nothing in the workdir; a write that fails is
  one error line naming the file and saying how to go on (not how to resume training). A picture that cannot
  be written (a full disk: a file-size limit here) is an OSError naming the file, which launch.py prints."""
  import subprocess
  import sys

  from mian_jax import plots

  before = sorted(str(p.relative_to(finished)) for p in finished.rglob("*"))
  picture = tmp_path / "figure6.png"
  run = _run(finished, data_root, "--plot", "gim", "--out", str(picture))
  assert run.returncode == 0, run.stderr
  assert picture.read_bytes().startswith(b"\x89PNG") and f"wrote {picture}" in run.stdout
  assert sorted(str(p.relative_to(finished)) for p in finished.rglob("*")) == before
  blocked = tmp_path / "a_file"
  blocked.write_text("not a folder")
  run = _run(finished, data_root, "--plot", "gim", "--out", str(blocked / "f.png"))
  assert run.returncode == 2 and _error_line(run.stderr).startswith(
    f"error: cannot write {blocked / 'f.png'}: Not a directory; give --out FILE in a folder you can write"
  ), run.stderr
  assert "resumes" not in run.stderr and blocked.read_text() == "not a folder"
  curves = tmp_path / "curves.png"
  script = (
    "import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000)); "
    "from mian_jax import plots\n"
    "try:\n  plots.training_curves(sys.argv[1], sys.argv[2])\n"
    "except OSError as e:\n  print('named', e.filename, e.strerror)\n"
  )
  done = subprocess.run(
    [sys.executable, "-c", script, str(finished / "metrics.jsonl"), str(curves)],
    capture_output=True,
    text=True,
    timeout=120,
    cwd=Path(plots.__file__).resolve().parents[1],
  )
  assert done.stdout.startswith(f"named {curves} File too large"), done.stdout + done.stderr
  assert not curves.exists() and not list(tmp_path.glob(".curves.png.*"))  # no half-written picture left


def test_a_log_without_its_checkpoints_is_kept_beside_a_run_that_starts_over(finished, tmp_path, data_root):
  """checkpoints/ moved away: the rerun cannot resume, says so, and keeps the earlier run's files (its log is
  not cut to step 0)."""
  w = _copy(finished, tmp_path)
  logged = (w / "metrics.jsonl").read_text()
  (w / "checkpoints").rename(tmp_path / "moved_checkpoints")
  run = _run(w, data_root, *RUN)
  assert run.returncode == 0, run.stderr
  note = next(line for line in run.stdout.splitlines() if "holds no checkpoint" in line)
  assert (
    note.startswith(f"note: {w} holds no checkpoint, but its log reached step 24")
    and "training starts at step 0" in note
  ), note
  kept = [p for p in w.iterdir() if p.name.startswith("previous-")]
  assert len(kept) == 1 and (kept[0] / "metrics.jsonl").read_text() == logged
  assert "resumed from" not in run.stdout and (tmp_path / "moved_checkpoints").is_dir()


def test_checkpoints_moved_away_during_a_run_are_reported_as_such(tmp_path, data_root):
  """A real run saving every step; its checkpoints/ renamed under it: the failed save says the folder was moved,
  not that training resumes from a step that went with it."""
  import subprocess
  import sys
  import time

  from helpers import xla_flags
  from test_e2e import ROOT

  w = tmp_path / "w"
  cmd = [
    sys.executable,
    str(ROOT / "launch.py"),
    "--experiment",
    "commercial:tiny",
    "--workdir",
    str(w),
    "--set",
    f"data.dir={data_root}",
    "--set",
    "train.steps=400",
    "--set",
    "train.checkpoint_every=1",
  ]
  proc = subprocess.Popen(
    cmd,
    cwd=ROOT,
    env={**os.environ, "XLA_FLAGS": xla_flags(), "JAX_PLATFORMS": "cpu"},
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  try:
    deadline = time.time() + 300
    while not (w / "checkpoints" / "2").is_dir():
      assert proc.poll() is None and time.time() < deadline, "no checkpoint yet"
      time.sleep(0.1)
    (w / "checkpoints").rename(tmp_path / "elsewhere")
    _, err = proc.communicate(timeout=300)
  finally:
    proc.kill()
  assert proc.returncode == 2, err
  line = _error_line(err)
  assert re.match(
    rf"error: could not write checkpoint step \d+: {w / 'checkpoints'} was moved or deleted while the run "
    rf"was writing it \(it held the checkpoints up to step \d+\); put it back",
    line,
  ), line
  assert "is kept and training resumes" not in err
