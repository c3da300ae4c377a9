"""Each data set declares the data.* fields it reads (mian_jax.data: COMMON_FIELDS + DataSource.fields):
every DataConfig field is read by some data set, and `--set data.X` that the chosen data set does not
read is one error line naming who does, instead of a silent no-op."""

import dataclasses

import pytest

import launch
from mian_jax import data
from mian_jax.config import DataConfig


def test_every_data_field_is_read_by_some_data_set():
  declared = set(data.COMMON_FIELDS).union(*(s.fields for s in data.SOURCES.values()))
  assert {f.name for f in dataclasses.fields(DataConfig)} == declared
  for name, source in data.SOURCES.items():
    assert not set(source.fields) & set(data.COMMON_FIELDS), name


@pytest.mark.parametrize(
  "experiment, key, who",
  [
    ("movielens:tiny", "data.scale=0.5", "only commercial does"),
    ("commercial:tiny", "data.schema=x.toml", "only custom does"),
    ("yelp:tiny", "data.test_per_user=2", "only movielens does"),
  ],
)
def test_a_field_the_data_set_does_not_read_is_refused(experiment, key, who, tmp_path, capfd):
  code = launch.main(["--experiment", experiment, "--workdir", str(tmp_path / "w"), "--set", key])
  lines = capfd.readouterr().err.strip().splitlines()
  assert code == 2 and len(lines) == 1, lines
  assert lines[0].startswith(f"error: --set {key.split('=')[0]}: data.source=") and who in lines[0], lines
  assert not (tmp_path / "w").exists()


def test_fields_the_data_set_reads_pass():
  cfg = DataConfig(source="custom")
  data.check_overrides(cfg, ["data.schema=x.toml", "data.max_len=20", "data.validation_fraction=0.1"])
