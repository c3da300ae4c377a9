"""Data found out before training, not after: a test file holding only a header is one `error:` line before
the first step (no checkpoint, no training lost); a test split with one class trains, and prints its AUC
as undefined with a warning instead of `auc=nan` (model selection ignores it)."""

import random
from pathlib import Path

import launch
from test_custom import HEADER, SCHEMA


def _write(folder: Path, test_rows: list[str], n_train: int = 96) -> Path:
  rng = random.Random(0)
  folder.mkdir(parents=True, exist_ok=True)
  rows = [
    f"{rng.randint(0, 1)},u{i % 12},a{rng.randint(1, 9)},a{rng.randint(1, 9)}|a{rng.randint(1, 9)},F,plain,"
    f"{rng.randint(1, 99)},x"
    for i in range(n_train)
  ]
  (folder / "train-0.csv").write_text("\n".join([HEADER] + rows) + "\n")
  (folder / "test.csv").write_text("\n".join([HEADER] + test_rows) + "\n")
  (folder / "schema.toml").write_text(SCHEMA.replace("{ext}", "csv"))
  return folder


def _main(tmp_path: Path, capfd, monkeypatch, folder: Path, *sets: str) -> tuple[int, str, str]:
  monkeypatch.setenv("MIAN_JAX_CACHE", str(tmp_path / "cache"))
  argv = [
    "--experiment",
    "custom:tiny",
    "--workdir",
    str(tmp_path / "w"),
    "--set",
    f"data.dir={folder}",
    "--set",
    f"data.schema={folder / 'schema.toml'}",
  ] + [a for s in sets for a in ("--set", s)]
  code = launch.main(argv)
  out = capfd.readouterr()
  return code, out.out, out.err


def test_a_test_file_with_only_a_header_is_refused_before_training(tmp_path, capfd, monkeypatch):
  folder = _write(tmp_path / "csv", [])
  code, out, err = _main(tmp_path, capfd, monkeypatch, folder)
  lines = err.strip().splitlines()
  assert code == 2 and len(lines) == 1, err
  assert lines[0].startswith("error: ") and "has no test rows" in lines[0], lines
  assert not (tmp_path / "w" / "checkpoints").exists()  # refused before the first step


def test_a_test_split_with_one_class_prints_auc_as_undefined(tmp_path, capfd, monkeypatch):
  folder = _write(tmp_path / "csv", [f"0,u{i},a{i % 9 + 1},a1|a2,F,plain,5,x" for i in range(40)])
  code, out, err = _main(tmp_path, capfd, monkeypatch, folder, "data.validation=test", "train.steps=4")
  assert code == 0, err
  assert "warning: the test split has one class only (every label 0): its AUC and gAUC are undefined" in out
  final = [l for l in out.splitlines() if l.startswith("final test")]
  assert final and final[0].startswith("final test auc=undefined gauc=undefined logloss="), out
  assert "nan" not in final[0]
