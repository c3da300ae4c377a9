"""End to end through launch.py: a tiny commercial run that trains, evaluates, checkpoints, resumes and
starts afresh (kills, signals and bad input: test_faults.py, test_bad_input.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from helpers import launch_here, xla_flags

ROOT = Path(__file__).resolve().parents[1]


def _launch(workdir, data_root, *args, wait=True):
  cmd = [
    sys.executable,
    str(ROOT / "launch.py"),
    "--experiment",
    "commercial:tiny",
    "--workdir",
    str(workdir),
    "--set",
    f"data.dir={data_root}",
    *args,
  ]
  env = {**os.environ, "XLA_FLAGS": xla_flags(), "JAX_PLATFORMS": "cpu"}
  if not wait:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _run(workdir, data_root, *args):
  """_launch in this process (helpers.launch_here): for tests that need a run's results, not its process."""
  return launch_here(
    ["--experiment", "commercial:tiny", "--workdir", str(workdir), "--set", f"data.dir={data_root}", *args]
  )


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
  run = _run(tmp_path / "w", data_root)
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
  again = _run(tmp_path / "w", data_root)
  assert again.returncode == 0, again.stderr
  assert "resumed from step 24" in again.stdout
  assert again.stdout.strip().splitlines()[-1] == last
  fresh = _run(tmp_path / "w", data_root, "--fresh", "--set", "train.steps=5")
  assert fresh.returncode == 0 and "resumed" not in fresh.stdout


def test_predictions_of_the_last_step_reuse_its_evaluation(tmp_path, data_root, monkeypatch):
  """One evaluation, at the last step: the test split is scored once, for the metrics and the saved predictions."""
  from mian_jax import metrics
  from mian_jax.train import predictions
  from mian_jax.train.run import Run

  scored, real = [], Run.scores
  monkeypatch.setattr(
    Run, "scores", lambda self, params, split="test", *a: scored.append(split) or real(self, params, split, *a)
  )
  run = _run(tmp_path / "w", data_root, "--set", "train.steps=8", "--set", "train.eval_every=8")
  assert run.returncode == 0, run.stderr
  result = json.loads((tmp_path / "w" / "result.json").read_text())
  p = predictions.read(tmp_path / "w" / predictions.FILE)
  assert p.step == result["best_step"] == 8 and scored.count("test") == 1
  assert metrics.auc(p.label_n, p.prob_n) == result["auc"]


def test_test_predictions_come_from_the_reported_checkpoint(tmp_path, data_root):
  from mian_jax import metrics
  from mian_jax.train import predictions

  args = [
    "--model",
    "din",
    "--set",
    "train.steps=40",
    "--set",
    "train.eval_every=10",
    "--set",
    "train.learning_rate=0.05",
  ]
  run = _launch(tmp_path / "w", data_root, *args)
  assert run.returncode == 0, run.stderr
  path = tmp_path / "w" / predictions.FILE
  result_text = (tmp_path / "w" / "result.json").read_text()
  result = json.loads(result_text)
  assert result["best_step"] < result["step"] == 40  # the reported checkpoint is an earlier one (this setting)
  p = predictions.read(path)
  assert p.step == result["best_step"]
  # The very scores the reported test metrics were computed from, at the best step.
  assert metrics.auc(p.label_n, p.prob_n) == result["auc"]
  assert metrics.gauc(p.label_n, p.prob_n, p.group_n) == result["gauc"]
  first = path.read_bytes()
  path.unlink()  # a finished run that lost them writes them again from its best checkpoint, training nothing
  again = _launch(tmp_path / "w", data_root, *args)
  assert again.returncode == 0, again.stderr
  assert path.read_bytes() == first and (tmp_path / "w" / "result.json").read_text() == result_text
