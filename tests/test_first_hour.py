"""What a new user meets first, each trap closed: a variant's own default workdir; --eval / --predict / --export
/ --plot on a workdir without checkpoints (one error line, nothing created); train.mesh and the batches
checked against the devices before any data is built; a "did you mean" for unknown keys, experiments, models
and sweeps (model names in any case); `experiment` is not a --set key; --print-config; a tiny variant's first
line; every config field described, and the README naming only real ones."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import experiments
import launch
from helpers import xla_flags
from mian_jax import config_fields
from mian_jax.config import Config
from mian_jax.train import workdir as workdir_lib

ROOT = Path(__file__).resolve().parents[1]
TINY_NOTE = "note: commercial:tiny is a seconds-long smoke run"


def _main(capfd, *argv: str) -> tuple[int, list[str], list[str]]:
  """launch.main(argv) in this process: (exit code, stdout lines, stderr lines); capfd also sees whatever a
  library writes to the file descriptors."""
  code = launch.main(list(argv))
  out = capfd.readouterr()
  return code, out.out.splitlines(), out.err.strip().splitlines()


def _one_error(code: int, err: list[str], *needles: str) -> None:
  assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
  for needle in needles:
    assert needle in err[0], (needle, err[0])


def test_a_variant_gets_its_own_default_workdir():
  assert workdir_lib.default(experiments.get_config("commercial:tiny")) == Path("runs/commercial-tiny/mian")
  assert workdir_lib.default(experiments.get_config("commercial")) == Path("runs/commercial/mian")
  assert workdir_lib.default_sweep_root(experiments.get_config("movielens:tiny"), "smoke") == Path(
    "runs/movielens-tiny/sweeps/smoke"
  )


def test_eval_without_checkpoints_is_one_line_and_creates_nothing(tmp_path):
  """As a script (Orbax's shutdown traceback came at interpreter exit), on the default workdir."""
  env = {**os.environ, "XLA_FLAGS": xla_flags(), "JAX_PLATFORMS": "cpu"}
  out = subprocess.run(
    [sys.executable, str(ROOT / "launch.py"), "--experiment", "commercial:tiny", "--eval"],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 2 and out.stderr.splitlines() == [
    "error: runs/commercial-tiny/mian does not exist; train first (the same command without this flag), or give "
    "the trained run's --workdir"
  ], out.stderr
  assert out.stdout.splitlines()[0].startswith(TINY_NOTE)
  assert list(tmp_path.iterdir()) == []  # no workdir, no checkpoints/, no data set


@pytest.mark.parametrize(
  "mode",
  [
    ["--eval"],
    ["--plot", "gim"],
    ["--export", "{tmp}/exported"],
    ["--predict", "{tmp}/data", "--out", "{tmp}/scores.csv"],
  ],
)
def test_every_mode_on_a_run_killed_before_its_first_checkpoint(tmp_path, capfd, mode):
  (tmp_path / "w" / "checkpoints").mkdir(parents=True)  # what a run stopped before its first checkpoint leaves
  before = sorted(tmp_path.rglob("*"))
  code, _, err = _main(
    capfd,
    "--experiment",
    "commercial:tiny",
    "--workdir",
    str(tmp_path / "w"),
    "--set",
    f"data.dir={tmp_path / 'data'}",
    *[m.format(tmp=tmp_path) for m in mode],
  )
  _one_error(code, err, f"no checkpoint in {tmp_path / 'w' / 'checkpoints'}; train first")
  assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize(
  "sets, needle",
  [
    (["train.mesh=data=3"], "train.mesh=data=3: 3 x 1 = 3 devices, but there are 8"),
    (["train.mesh=data=2,model=2"], "train.mesh=data=2,model=2: 2 x 2 = 4 devices, but there are 8"),
    (["train.eval_batch_size=1020"], "train.eval_batch_size=1020 does not split over 8 devices"),
  ],
)
def test_the_mesh_and_the_batches_are_checked_before_any_data_is_built(tmp_path, capfd, sets, needle):
  code, _, err = _main(
    capfd,
    "--experiment",
    "commercial:tiny",
    "--workdir",
    str(tmp_path / "w"),
    "--set",
    f"data.dir={tmp_path / 'data'}",
    *[a for s in sets for a in ("--set", s)],
  )
  _one_error(code, err, needle)
  assert list(tmp_path.iterdir()) == []  # no data set generated, no workdir


def test_a_mesh_that_fits_the_devices_passes_the_check():
  from mian_jax.config import apply_overrides
  from mian_jax.train import run

  config = apply_overrides(experiments.get_config("commercial:tiny"), ["train.mesh=data=4,model=2"])
  assert dict(run.check_devices(config).shape) == {"data": 4, "model": 2}


@pytest.mark.parametrize(
  "args, needle",
  [
    (["--experiment", "comercial"], "--experiment comercial: unknown (did you mean commercial?); valid: books,"),
    (["--experiment", "commercial", "--model", "dein"], "model 'dein' is unknown (did you mean din?); valid: dcn,"),
    (
      ["--experiment", "commercial", "--set", "train.batchsize=5"],
      "--set train.batchsize: unknown key (did you mean train.batch_size?)",
    ),
    (["--experiment", "commercial", "--set", "model.batch_size=5"], "(did you mean train.batch_size?)"),
    (["--experiment", "commercial", "--set", "seed=5"], "(did you mean data.seed or train.seed?)"),
    (["--experiment", "commercial", "--set", "train.xyz=5"], "the train.* keys are batch_size, steps, epochs,"),
    (
      ["--experiment", "commercial", "--set", "experiment=movielens"],
      "--set experiment: the experiment is chosen with --experiment NAME[:VARIANT], not --set",
    ),
    (
      ["--experiment", "commercial", "--sweep", "paper_tabel"],
      "--sweep paper_tabel: unknown (did you mean paper_table?)",
    ),
  ],
)
def test_unknown_names_get_a_did_you_mean(capfd, args, needle):
  code, _, err = _main(capfd, *args)
  _one_error(code, err, needle)
  assert "model.embed_dim" not in err[0]  # a suggestion or one section's keys, not all 55


def test_print_config_shows_every_field_its_value_and_its_description(capfd, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  code, out, err = _main(
    capfd, "--experiment", "commercial:tiny", "--model", "DeepFM", "--set", "train.batch_size=512", "--print-config"
  )
  assert code == 0 and err == []
  assert out[0].startswith(TINY_NOTE) and out[1].startswith("# commercial:tiny: every field")
  rows = {line.split("=", 1)[0]: line for line in out[2:]}
  fields = config_fields.fields(Config())
  assert list(rows) == [key for key, _, _ in fields]
  for key, _, doc in fields:
    assert rows[key].endswith(f"  # {doc}")
  assert rows["model.name"].startswith("model.name=deepfm ")  # any case, resolved to the registry's name
  assert rows["train.batch_size"].startswith("train.batch_size=512 ")
  assert rows["model.mlp"].startswith("model.mlp=16,8 ") and rows["experiment"].startswith(
    "experiment=commercial:tiny "
  )
  assert list(tmp_path.iterdir()) == []
  code, out, _ = _main(capfd, "--experiment", "commercial", "--print-config")
  assert code == 0 and out[0].startswith("# commercial: every field")  # no note for a real run


def test_every_config_field_has_a_description():
  missing = [key for key, _, doc in config_fields.fields(Config()) if not doc]
  assert missing == [], f"give these fields a comment in mian_jax/config.py: {missing}"


def test_the_readme_and_docs_name_only_config_fields_that_exist():
  keys = {key for key, _, _ in config_fields.fields(Config())}
  pages = [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
  named = set(
    re.findall(r"`((?:data|model|train|sweep)\.[a-z_0-9]+)(?:=[^`]*)?`", "".join(p.read_text() for p in pages))
  )
  assert {k for k in named if k.rsplit(".", 1)[1] not in ("py", "csv", "md", "png", "json")} - keys == set()
