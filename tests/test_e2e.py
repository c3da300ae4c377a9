"""End to end through launch.py: a tiny commercial run, and interrupted runs that resume to the same parameters."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _launch(workdir, data_root, *args, wait=True):
  cmd = [sys.executable, str(ROOT / "launch.py"), "--experiment", "commercial:tiny", "--workdir", str(workdir),
         "--set", f"data.dir={data_root}", *args]
  env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
  if not wait:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _final_params(workdir):
  import orbax.checkpoint as ocp

  ckpt_dir = Path(workdir) / "checkpoints"
  step = max(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit())
  with ocp.CheckpointManager(ckpt_dir.absolute(), item_names=("state",)) as m:
    tree = m.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state
  return step, tree


def _assert_same_params(a, b):
  import jax

  la, lb = jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"])
  assert len(la) == len(lb) > 10
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  np.testing.assert_array_equal(np.asarray(a["opt_state"][0]["count"]), np.asarray(b["opt_state"][0]["count"]))


def test_tiny_run_trains_evaluates_and_checkpoints(tmp_path, data_root):
  run = _launch(tmp_path / "w", data_root)
  assert run.returncode == 0, run.stderr
  last = run.stdout.strip().splitlines()[-1]
  assert last.startswith("final test auc=") and "gauc=" in last and "logloss=" in last and "(bayes auc=" in last
  events = [json.loads(l) for l in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
  train = [e for e in events if e["split"] == "train"]
  test = [e for e in events if e["split"] == "test"]
  assert train and all({"step", "loss", "samples_per_s"} <= set(e) for e in train)
  assert test and all(0 <= e["auc"] <= 1 and e["logloss"] > 0 and "gauc" in e for e in test)
  assert train[-1]["loss"] < train[0]["loss"]
  config = json.loads((tmp_path / "w" / "config.json").read_text())
  assert config["model"]["name"] == "mian" and config["data"]["dir"] == str(data_root)
  # Run again: nothing left to train; it says it resumed and reports the same final metrics.
  again = _launch(tmp_path / "w", data_root)
  assert again.returncode == 0, again.stderr
  assert "resumed from step 25" in again.stdout
  assert again.stdout.strip().splitlines()[-1] == last
  fresh = _launch(tmp_path / "w", data_root, "--fresh", "--set", "train.steps=5")
  assert fresh.returncode == 0 and "resumed" not in fresh.stdout


def test_resumed_run_ends_with_the_same_parameters(tmp_path, data_root):
  # A constant learning rate: a cosine schedule's length depends on train.steps, which this test changes.
  const = ("--set", "train.lr_schedule=constant")
  full = _launch(tmp_path / "full", data_root, "--set", "train.steps=20", *const)
  assert full.returncode == 0, full.stderr
  # The same run, stopped after 8 steps (a run of 8 steps), then continued to 20.
  part = _launch(tmp_path / "part", data_root, "--set", "train.steps=8", *const)
  assert part.returncode == 0, part.stderr
  rest = _launch(tmp_path / "part", data_root, "--set", "train.steps=20", *const)
  assert rest.returncode == 0, rest.stderr
  assert "resumed from step 8" in rest.stdout
  step_a, a = _final_params(tmp_path / "full")
  step_b, b = _final_params(tmp_path / "part")
  assert step_a == step_b == 20
  _assert_same_params(a, b)


KILL_ARGS = ("--set", "train.steps=80", "--set", "train.checkpoint_every=10")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_root):
  """Final parameters of the uninterrupted run the killed runs must reproduce (run once for both)."""
  workdir = tmp_path_factory.mktemp("uninterrupted")
  ref = _launch(workdir, data_root, *KILL_ARGS)
  assert ref.returncode == 0, ref.stderr
  return _final_params(workdir)[1]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_resumes_to_the_same_parameters(tmp_path, data_root, sig, uninterrupted):
  args = KILL_ARGS
  proc = _launch(tmp_path / "killed", data_root, *args, wait=False)
  ckpts = tmp_path / "killed" / "checkpoints"
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if ckpts.exists() and any(p.name.isdigit() for p in ckpts.iterdir()):
      break
    time.sleep(0.02)
  proc.send_signal(sig)
  out, _ = proc.communicate(timeout=300)
  if sig == signal.SIGTERM and "interrupted" in out:
    assert proc.returncode == 75, out
    assert "run the same command again to resume" in out
  resumed = _launch(tmp_path / "killed", data_root, *args)
  assert resumed.returncode == 0, resumed.stderr
  assert "resumed from step" in resumed.stdout or proc.returncode == 0
  _assert_same_params(uninterrupted, _final_params(tmp_path / "killed")[1])
