"""The command line: --help lists what exists; user mistakes give one `error:` line and a non-zero exit."""

import subprocess
import sys
from pathlib import Path

import pytest

from experiments import sweeps
from mian_jax import models

ROOT = Path(__file__).resolve().parents[1]


def _run(*args):
  return subprocess.run(
    [sys.executable, str(ROOT / "launch.py"), *args], cwd=ROOT, capture_output=True, text=True, timeout=120
  )


def test_help_lists_experiments_and_models():
  out = _run("--help")
  assert out.returncode == 0
  assert "commercial" in out.stdout and "mian_no_gim" in out.stdout


@pytest.mark.parametrize(
  "args, needle",
  [
    (["--experiment", "nope"], "--experiment nope: unknown; valid: books, commercial, custom, electronics, movielens"),
    (["--experiment", "commercial", "--model", "nope"], f"model 'nope' is unknown; valid: {', '.join(models.names())}"),
    (
      ["--experiment", "commercial", "--set", "train.batch_sze=3"],
      "--set train.batch_sze: unknown key (did you mean train.batch_size?)",
    ),
    (["--experiment", "commercial", "--set", "train.batch_size=big"], "--set train.batch_size=big: expected int"),
    (
      ["--experiment", "commercial", "--set", "model.ibim_encoder=lstm"],
      "must be one of pre_ln, post_ln, causal, gru, gru_pre_ln, none",
    ),
    (["--experiment", "commercial", "--set", "train.steps"], "expected KEY=VALUE"),
    (["--experiment", "commercial", "--set", "train.epochs=0"], "train.epochs=0 is out of range: it must be in 1.."),
    (["--experiment", "commercial", "--sweep", "nope"], f"--sweep nope: unknown; valid: {', '.join(sweeps.names())}"),
  ],
)
def test_user_mistakes_are_one_error_line(args, needle):
  out = _run(*args)
  assert out.returncode == 2
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
  assert needle in lines[0]
  assert "Traceback" not in out.stderr


def test_batch_not_a_multiple_of_the_block_is_explained(tmp_path):
  out = _run(
    "--experiment",
    "commercial:tiny",
    "--workdir",
    str(tmp_path / "w"),
    "--set",
    f"data.dir={tmp_path}",
    "--set",
    "train.batch_size=40",
  )
  assert out.returncode == 2
  assert out.stderr.startswith("error: ") and "multiple of 32" in out.stderr


def test_a_workdir_below_a_file_says_so(tmp_path):
  (tmp_path / "f").write_text("mine")
  out = _run(
    "--experiment",
    "commercial:tiny",
    "--workdir",
    str(tmp_path / "f" / "sub"),
    "--set",
    f"data.dir={tmp_path / 'data'}",
  )
  assert out.returncode == 2
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"error: cannot write {tmp_path / 'f' / 'sub'}"), out.stderr
  assert "a part of that path is a file, not a folder" in lines[0] and "free space" not in lines[0]
  assert (tmp_path / "f").read_text() == "mine"
