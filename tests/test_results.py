"""What a finished run leaves to look at and to use: TensorBoard event files (read back with
tensorboard's own reader), the curves PNG and the final summary; --eval on the best checkpoint; --predict
scores every record in input order; --export through launch.py (the exported function itself:
test_export.py)."""

import csv
import json
import re

import matplotlib.image
import numpy as np
import pytest

from helpers import decode_split
from test_e2e import ROOT, _run

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]  # the pages a user reads


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root):
  workdir = tmp_path_factory.mktemp("results") / "w"
  run = _run(workdir, data_root, "--set", "train.steps=12", "--set", "train.eval_every=6", "--set", "train.log_every=3")
  assert run.returncode == 0, run.stderr
  return workdir, run.stdout


def test_tensorboard_curves_and_summary(trained):
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

  workdir, out = trained
  acc = EventAccumulator(str(workdir / "tensorboard"))
  acc.Reload()
  tags = set(acc.Tags()["scalars"])
  assert tags == {
    "train/loss",
    "train/samples_per_s",
    "train/learning_rate",
    "train/grad_norm",
    "train/skipped",
    "valid/auc",
    "valid/gauc",
    "valid/logloss",
    "test/auc",
    "test/gauc",
    "test/logloss",
  }
  assert all(any(f"`{tag}`" in p.read_text() for p in DOCS) for tag in tags)  # the docs list each
  assert [e.step for e in acc.Scalars("train/loss")] == [3, 6, 9, 10, 12]  # and before the checkpoint at 10
  assert [e.step for e in acc.Scalars("test/auc")] == [6, 12]
  events = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  final_auc = [e["auc"] for e in events if e["split"] == "test"][-1]
  assert acc.Scalars("test/auc")[-1].value == pytest.approx(final_auc, abs=1e-6)
  png = workdir / "curves.png"
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and matplotlib.image.imread(png).shape[1] > 600
  lines = out.strip().splitlines()
  assert lines[-1].startswith("final test auc=")
  assert any(l.startswith("best checkpoint: step ") and str(workdir / "checkpoints") in l for l in lines)
  assert any(str(png) in l for l in lines) and any("tensorboard --logdir" in l for l in lines)


def test_metrics_jsonl_holds_the_fields_the_readme_names(trained):
  workdir, _ = trained
  events = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  kinds = {tuple(sorted(e)) for e in events}
  assert kinds == {
    ("grad_norm", "loss", "samples_per_s", "skipped", "split", "step"),
    ("auc", "gauc", "logloss", "split", "step"),
  }
  assert all(any(f'"{field}"' in p.read_text() for p in DOCS) for kind in kinds for field in kind)  # named


def test_a_log_file_gets_a_progress_line_every_log_every_steps_and_per_evaluation(trained):
  """stdout is a pipe here, as in a batch job's log: no bar, plain lines (mian_jax/progress.py)."""
  _, out = trained
  assert out.splitlines()[0].startswith("note: commercial:tiny is a seconds-long smoke run")  # tiny: not results
  steps = [l for l in out.splitlines() if l.startswith("step ") and "/12 (" in l]
  assert [int(l.split()[1].split("/")[0]) for l in steps] == [3, 6, 9, 12]  # train.log_every=3
  assert re.fullmatch(r"step 3/12 \(25%\) loss=\d\.\d{4} [\d,]+ samples/s eta \d+(m\d\d)?s", steps[0]), steps[0]
  assert re.fullmatch(r"step 12/12 \(100%\) loss=\d\.\d{4} [\d,]+ samples/s in \d+(m\d\d)?s", steps[-1]), steps[-1]
  passes = [l.split(":")[0] for l in out.splitlines() if l.startswith("eval ")]
  # Two evaluations (train.eval_every=6), and the test split scored again for test_predictions.npz when the
  # best checkpoint is not the last one.
  best = json.loads((trained[0] / "result.json").read_text())["best_step"]
  assert passes == ["eval valid", "eval test"] * 2 + (["eval test"] if best != 12 else [])
  assert f"test predictions of checkpoint step {best}: " in out
  assert "\r" not in out


def test_eval_prints_the_final_line_of_the_best_checkpoint(trained, data_root):
  workdir, out = trained
  run = _run(workdir, data_root, "--set", "train.steps=12", "--eval")
  assert run.returncode == 0, run.stderr
  best = json.loads((workdir / "result.json").read_text())["best_step"]
  events = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  at_best = [e for e in events if e["split"] == "test" and e["step"] == best][0]
  last = run.stdout.strip().splitlines()[-1]
  assert last.startswith(
    f"final test auc={at_best['auc']:.4f} gauc={at_best['gauc']:.4f} logloss={at_best['logloss']:.4f}"
  )
  assert f"(checkpoint step {best})" in last
  assert "train" not in run.stdout.split("final test")[0].lower().replace("trained", "")


def test_predict_scores_every_record_in_input_order(trained, data_root, tiny_source, tmp_path):
  import jax

  import experiments
  from mian_jax.train import step as step_lib
  from mian_jax.train.run import Run

  workdir, _ = trained
  out = tmp_path / "scores.csv"
  run = _run(workdir, data_root, "--set", "train.steps=12", "--predict", str(tiny_source.directory), "--out", str(out))
  assert run.returncode == 0, run.stderr
  with out.open() as f:
    rows = list(csv.DictReader(f))
  expected_rows = decode_split(tiny_source.directory, tiny_source.meta, "test")
  assert [int(r["row"]) for r in rows] == list(range(len(expected_rows["label"])))
  assert [int(r["user"]) for r in rows] == expected_rows["user_id"].tolist()  # no vocabulary: the user id
  got = np.array([float(r["probability"]) for r in rows])
  # The same best checkpoint, scored in-process on the split in file order.
  config = experiments.get_config("commercial:tiny")
  config.data.dir = str(data_root)
  restored, params, _ = Run.restore(config, workdir)
  model, src = restored.model, restored.src
  probs = np.asarray(jax.jit(step_lib.make_eval_step(model, src.schema))(jax.device_get(params), expected_rows))
  assert got.std() > 1e-3  # the order matters: the scores differ
  np.testing.assert_allclose(got, probs, atol=2e-6)
  bad = _run(workdir, data_root, "--set", "train.steps=12", "--predict", str(tmp_path), "--out", str(out))
  assert bad.returncode == 2 and bad.stderr.startswith(f"error: {tmp_path}: no meta.json")


def test_export_through_run(trained, data_root, tmp_path):
  from mian_jax.serving import Scorer

  workdir, _ = trained
  run = _run(workdir, data_root, "--set", "train.steps=12", "--export", str(tmp_path / "exported"))
  assert run.returncode == 0, run.stderr
  assert f"exported to {tmp_path / 'exported'}" in run.stdout
  scorer = Scorer.load(tmp_path / "exported")
  assert scorer.max_len > 0 and (tmp_path / "exported" / "manifest.json").exists()
