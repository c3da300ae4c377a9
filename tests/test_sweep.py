"""Sweeps: stable readable trial ids, grids and seeds, device groups per platform, results tables; through
launch.py: trials in parallel on disjoint groups of fake CPU devices, an interrupted sweep resumed, a
finished one not run again, a failing trial reported without stopping the others; the GIM figure."""

import copy
import csv
import json
import os
import signal
import subprocess
import sys
import time

import matplotlib.image
import pytest

import experiments
from experiments import sweeps
from mian_jax import sweep
from mian_jax.train import predictions
from mian_jax.config import apply_overrides
from mian_jax.models import ABLATIONS
from tests.test_e2e import ROOT, _launch
from helpers import launch_here, xla_flags


def test_trial_ids_are_readable_stable_and_unique():
  trials = sweeps.grid({"model.name": ["din", "mian"], "model.embed_dim": [8, 18]})
  assert [t["model.embed_dim"] for t in trials] == ["8", "18", "8", "18"]
  assert sweep.trial_ids(trials) == [
    "name=din,embed_dim=8",
    "name=din,embed_dim=18",
    "name=mian,embed_dim=8",
    "name=mian,embed_dim=18",
  ]
  assert sweep.trial_ids(trials) == sweep.trial_ids(
    sweeps.grid({"model.name": ["din", "mian"], "model.embed_dim": [8, 18]})
  )
  # Keys that end alike keep their section; characters unfit for a directory name become "_".
  assert sweep.trial_ids([{"model.seed": "1", "train.seed": "2", "train.mesh": "data=4,model=2"}]) == [
    "model.seed=1,train.seed=2,mesh=data_4_model_2"
  ]
  with pytest.raises(ValueError, match="more than once"):
    sweep.trial_ids([{"model.name": "lr"}, {"model.name": "lr"}])
  seeded = sweeps.trials("paper_table", seeds=3)
  assert len(seeded) == 3 * len(sweeps.trials("paper_table")) and seeded[:2] == [
    {"model.name": "lr", "train.seed": "0"},
    {"model.name": "lr", "train.seed": "1"},
  ]
  assert sweeps.trials("embed_dim", seeds=5) == sweeps.trials("embed_dim")  # it sets its own seeds
  assert sweep.EXIT_PREEMPTED == __import__("mian_jax.train.loop", fromlist=["x"]).EXIT_PREEMPTED


def test_device_groups_per_platform():
  cpu = sweep.device_groups("cpu", 8, 4, {"XLA_FLAGS": "--xla_foo --xla_force_host_platform_device_count=8"})
  assert [label for label, _ in cpu] == ["cpu:0-3", "cpu:4-7"]
  assert cpu[0][1]["XLA_FLAGS"] == "--xla_foo --xla_force_host_platform_device_count=4"
  assert len(sweep.device_groups("cpu", 8, 0, {})) == 1  # CPU default: the trials one after another
  gpu = sweep.device_groups("gpu", 4, 0, {"CUDA_VISIBLE_DEVICES": "2,3,5,7"})  # default: one GPU per trial
  assert [env["CUDA_VISIBLE_DEVICES"] for _, env in gpu] == ["2", "3", "5", "7"]
  pairs = sweep.device_groups("gpu", 4, 2, {}, version="rocm 6.2")
  assert [env["HIP_VISIBLE_DEVICES"] for _, env in pairs] == ["0,1", "2,3"]
  tpu = sweep.device_groups("tpu", 4, 1, {})
  assert [env["TPU_VISIBLE_CHIPS"] for _, env in tpu] == ["0", "1", "2", "3"]
  assert len({env["TPU_PROCESS_PORT"] for _, env in tpu}) == 4
  with pytest.raises(ValueError, match="only 8 cpu device"):
    sweep.device_groups("cpu", 8, 16, {})


def test_results_markdown_groups_seeds_and_compares_models():
  rows = [
    {
      "trial": f"name={m},seed={s}",
      "model.name": m,
      "train.seed": str(s),
      "status": "ok",
      "auc": auc,
      "gauc": auc - 0.1,
      "logloss": 0.5,
      "samples_per_s": 100.0,
      "best_step": 10,
      "wall_s": 1.0,
      "valid_auc": auc + 0.01,
      "best_epoch": 2.0,
      "epoch": 4.0,
    }
    for m, s, auc in (("din", 0, 0.70), ("din", 1, 0.72), ("mian", 0, 0.74), ("mian", 1, 0.76), ("mian_paper", 0, 0.73))
  ]
  rows.append({"trial": "name=lr,seed=0", "model.name": "lr", "train.seed": "0", "status": "failed: error: boom"})
  text = sweep.results_markdown(rows)
  assert "| name=din | 2 | 0.7200 ± 0.0141 | 0.7100 ± 0.0141 | - |" in text  # no predictions: no interval
  assert "| name=mian | 2 | **0.7600 ± 0.0141** | **0.7500 ± 0.0141** | best |" in text
  assert "| name=lr | 0 | - | - |" in text and "| name=lr,seed=0 | failed: error: boom |" in text
  assert "| name=mian,seed=1 | ok | 0.7700 | 0.7600 | 10 | 2 | 4 | 1 |" in text  # best and stopping epochs
  # trials without a validation AUC (data.validation=test or none): that column is empty
  bare = sweep.results_markdown([{k: v for k, v in r.items() if k != "valid_auc"} for r in rows])
  assert "| name=din | 2 | - | 0.7100 ± 0.0141 |" in bare
  # the best other model is a baseline's, not a variant of MIAN's (mian_paper, 0.73, is above DIN)
  assert "mian vs the best other model (name=din): AUC +0.0400 (RelaImpr +19.05%)" in text


def _sweep_cmd(root, data_root, *sets):
  cmd = [
    sys.executable,
    str(ROOT / "launch.py"),
    "--experiment",
    "commercial:tiny",
    "--sweep",
    "smoke",
    "--workdir",
    str(root),
    "--set",
    f"data.dir={data_root}",
    "--set",
    "sweep.devices_per_trial=4",
  ]
  return cmd + [a for s in sets for a in ("--set", s)]


def test_sweep_runs_in_parallel_resumes_when_interrupted_and_skips_finished(tmp_path, data_root):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags(8)}
  root = tmp_path / "smoke"
  cmd = _sweep_cmd(
    root, data_root, "train.steps=60", "train.checkpoint_every=10", "train.log_every=10", "train.eval_every=30"
  )
  first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 300
  while not list(root.glob("name=*/checkpoints/[0-9]*")) and first.poll() is None and time.time() < deadline:
    time.sleep(0.1)
  first.send_signal(signal.SIGTERM)  # the sweep passes it on: its trials save a checkpoint and stop
  out, _ = first.communicate(timeout=300)
  assert first.returncode == 75, out
  assert "2 at a time on cpu (cpu:0-3, cpu:4-7)" in out and "interrupted: run the same command again" in out
  with open(root / "results.csv") as f:
    assert [r["status"] for r in csv.DictReader(f)] == ["interrupted"] * 4
  second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert second.returncode == 0, second.stdout + second.stderr
  logs = [(root / t / "log.txt").read_text() for t in ("name=lr,seed=0", "name=lr,seed=1")]
  assert all("resumed from step" in log for log in logs)  # the two interrupted trials went on
  with open(root / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["trial"] for r in rows] == ["name=lr,seed=0", "name=lr,seed=1", "name=deepfm,seed=0", "name=deepfm,seed=1"]
  assert all(r["status"] == "ok" and r["step"] == "60" and 0 < float(r["auc"]) < 1 for r in rows)
  assert {r["devices"] for r in rows} == {"cpu:0-3", "cpu:4-7"}
  text = (root / "results.md").read_text()
  assert "| name=lr | 2 | 0." in text and " ± " in text
  assert matplotlib.image.imread(root / "results.png").shape[0] > 100
  with open(root / "settings.csv") as f:  # each setting's AUC minus the best's, from the trials' predictions
    settings = {r["setting"]: r for r in csv.DictReader(f)}
  worse = min(settings.values(), key=lambda r: float(r["auc_mean"]))
  assert float(worse["ci95_low"]) < float(worse["auc_minus_best"]) < float(worse["ci95_high"])
  assert float(worse["auc_minus_best"]) == pytest.approx(
    float(worse["auc_mean"]) - max(float(r["auc_mean"]) for r in settings.values()), abs=1e-6
  )
  # A finished trial that lost its predictions runs again to write them from its checkpoint, training nothing.
  lost = root / "name=deepfm,seed=1" / "test_predictions.npz"
  lost.unlink()
  result = (lost.parent / "result.json").read_text()
  third = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert third.returncode == 0 and third.stdout.count("finished before, not run again") == 3
  assert (lost.parent / "result.json").read_text() == result  # its rates and wall time: nothing trained
  assert predictions.read(lost).step == json.loads(result)["best_step"]


def test_a_failing_trial_does_not_stop_the_others(tmp_path, data_root):
  trials = [{"train.mesh": "data=3"}, {"model.name": "lr"}]  # the first cannot build its mesh on one device
  base = [f"data.dir={data_root}", "train.steps=6", "train.log_every=3", "train.eval_every=6"]
  env = {**os.environ, "XLA_FLAGS": xla_flags(), "JAX_PLATFORMS": "cpu"}
  rows = sweep.run("commercial:tiny", trials, tmp_path, base, env=env)
  assert rows[0]["status"] == "failed: error: train.mesh=data=3: 3 x 1 = 3 devices, but there are 1"
  assert rows[1]["status"] == "ok" and rows[1]["step"] == 6
  text = (tmp_path / "results.md").read_text()
  assert "| mesh=data_3 | failed: error: train.mesh=data=3" in text


def test_gim_figure_from_the_best_checkpoint(tmp_path, data_root):
  run = _launch(tmp_path / "w", data_root, "--set", "train.steps=10")
  assert run.returncode == 0, run.stderr
  plot = _launch(tmp_path / "w", data_root, "--set", "train.steps=10", "--plot", "gim")
  assert plot.returncode == 0, plot.stderr
  png = tmp_path / "w" / "gim_attention.png"
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert matplotlib.image.imread(png).shape[0] > 200  # 14 rows of cells
  from mian_jax import predict
  from mian_jax.models.mian import FIGURE6_ORDER
  import experiments

  config = experiments.get_config("commercial:tiny")
  config.data.dir = str(data_root)
  w, columns = predict.gim_weights(config, tmp_path / "w")
  # The paper's seven inputs, then the default's candidate x history product
  assert w.shape == (14, 8) and columns == FIGURE6_ORDER + ("p_ib",)
  assert abs(w.sum(1) - 1).max() < 1e-5  # a softmax over the eight inputs


@pytest.mark.parametrize("experiment", experiments.names())
def test_every_sweeps_trials_are_valid_configs_of_every_experiment(experiment):
  """What launch.py checks before a sweep runs anything, here for every sweep: each trial on its own
  (a trial's overrides do not carry over to the next)."""
  base = experiments.get_config(experiment)
  for name in sweeps.names():
    for trial in sweeps.trials(name, seeds=1):
      apply_overrides(copy.deepcopy(base), [f"{k}={v}" for k, v in trial.items()])


def test_module_ablations_removes_every_module_once_without_ibim_first_and_mian_last():
  names = [t["model.name"] for t in sweeps.trials("module_ablations", seeds=0)]
  assert sorted(names) == sorted([*ABLATIONS, "mian"])
  assert names[0] == "mian_no_ibim" and names[-1] == "mian"
  # the modules that act without context fields (Yelp) before ICIM and its pair
  assert names.index("mian_no_gim") < names.index("mian_no_icim") < names.index("mian_no_iuim_icim")
  seeded = sweeps.trials("module_ablations", seeds=3)
  assert [t["train.seed"] for t in seeded[:3]] == ["0", "1", "2"] and len(seeded) == 3 * len(names)


def test_an_invalid_trial_is_refused_before_any_runs_naming_it(tmp_path):
  run = launch_here(
    [
      "--experiment",
      "commercial:tiny",
      "--sweep",
      "accelerator_batch",
      "--workdir",
      str(tmp_path / "s"),
      "--set",
      "data.block_size=2000",
      "--set",
      "train.batch_size=2000",
    ]
  )
  assert run.returncode == 2 and not (tmp_path / "s").exists()
  line = run.stderr.strip().splitlines()[-1]
  assert line.startswith(
    "error: --sweep accelerator_batch, trial batch_size=1024,learning_rate=0.004: "
    "train.batch_size=1024 must be a multiple of 2000"
  ), line


def test_a_second_sweep_on_the_same_folder_is_refused_before_any_trial(tmp_path):
  import os

  from mian_jax import files

  root = tmp_path / "sweep"
  root.mkdir()
  with files.Exclusive(root / ".sweep.lock", "held by the test"):  # a sweep running in this folder
    with pytest.raises(
      files.Busy, match=rf"{root} is in use by another sweep \(pid {os.getpid()} on .*\); wait for it"
    ):
      sweep.run("commercial:tiny", [{"model.name": "lr"}], root, [])
  assert sorted(p.name for p in root.iterdir()) == [".sweep.lock"]  # no trial started, no results written
  assert sweep.is_sweep(root)  # a folder holding only the lock of an ended sweep is a sweep's: it may be reused
