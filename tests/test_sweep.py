"""Sweeps: one process per trial, a failing trial reported without stopping the others, finished
trials not run again, the paper's table written; and the GIM figure from a trained run."""

import csv
from mian_jax import sweep
from tests.test_e2e import _launch


def test_sweep_runs_trials_reports_failures_and_skips_finished(tmp_path, data_root, capsys, monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "")  # trials are their own processes, with the real device count
  trials = [{"model.name": "lr"}, {"model.name": "mian", "train.learning_rate": "1e30"}]
  base = [f"data.dir={data_root}", "train.steps=12", "train.log_every=4", "train.eval_every=12"]
  rows = sweep.run("commercial:tiny", "t", trials, tmp_path, base)
  assert [r["trial"] for r in rows] == ["name=lr", "name=mian,learning_rate=1e30"]
  assert rows[0]["status"] == "ok" and 0 < rows[0]["auc"] < 1 and rows[0]["step"] == 12
  assert rows[1]["status"].startswith("failed: error: non-finite loss")
  with open(tmp_path / "results.csv") as f:
    assert [r["status"][:6] for r in csv.DictReader(f)] == ["ok", "failed"]
  table = sweep.paper_table(tmp_path, "t", rows, reference="lr")
  assert "| lr | **" in table and (tmp_path / "t.md").exists() and (tmp_path / "t.csv").exists()
  capsys.readouterr()
  again = sweep.run("commercial:tiny", "t", trials[:1], tmp_path, base)
  assert "finished before, not run again" in capsys.readouterr().out
  assert again[0]["auc"] == rows[0]["auc"]


def test_gim_figure_from_the_best_checkpoint(tmp_path, data_root):
  run = _launch(tmp_path / "w", data_root, "--set", "train.steps=10")
  assert run.returncode == 0, run.stderr
  plot = _launch(tmp_path / "w", data_root, "--set", "train.steps=10", "--plot", "gim")
  assert plot.returncode == 0, plot.stderr
  png = tmp_path / "w" / "gim_attention.png"
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  import matplotlib.image

  assert matplotlib.image.imread(png).shape[0] > 200  # 14 rows of cells
  from mian_jax import plots
  import experiments

  config = experiments.get_config("commercial:tiny")
  config.data.dir = str(data_root)
  w = plots.gim_weights(config, tmp_path / "w")
  assert w.shape == (14, 7)
  assert abs(w.sum(1) - 1).max() < 1e-5  # a softmax over the seven inputs
