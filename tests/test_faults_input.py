"""Adversarial input through `launch.py`'s main: each case ends in exit code 2 and one `error:` line naming
the file / key and the fix, never a traceback. Schema values of the wrong TOML type (a quoted "no" is not
false), a duplicated column name the schema uses, a CSV named .parquet (and the reverse), sizes beyond
the config's limits (data.max_len, batch sizes, widths: mian_jax/config.py MAX_*), and a batch that is
not a whole number of the data's blocks (config.check_batch)."""

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import launch
from mian_jax.config import ConfigError, check_batch
from mian_jax.data import custom
from test_custom import HEADER, params, write_csv, write_parquet


def _main(tmp_path: Path, capfd, monkeypatch, *sets: str, experiment: str = "custom:tiny") -> tuple[int, list[str]]:
  """launch.main(--experiment EXPERIMENT --set ...) in this process; (exit code, stderr lines). capfd reads
  file descriptor 2, so anything printed to it (a traceback, a library's warning) is seen too."""
  monkeypatch.setenv("MIAN_JAX_CACHE", str(tmp_path / "cache"))
  argv = ["--experiment", experiment, "--workdir", str(tmp_path / "w")] + [a for s in sets for a in ("--set", s)]
  code = launch.main(argv)
  return code, capfd.readouterr().err.strip().splitlines()


def _custom(folder: Path) -> tuple[str, str]:
  return f"data.dir={folder}", f"data.schema={folder / 'schema.toml'}"


def _one_error(code: int, lines: list[str], *needles: str) -> str:
  assert code == 2, lines
  assert len(lines) == 1 and lines[0].startswith("error: "), lines
  for needle in needles:
    assert needle in lines[0], (needle, lines[0])
  return lines[0]


def _nothing_converted(tmp_path: Path) -> None:
  assert not list((tmp_path / "cache").glob("*/meta.json")), "a data set was converted from a refused schema"


# ------------------------------------------------------------------ (a) schema values of the wrong type


@pytest.mark.parametrize(
  "old, new, key, wanted",
  [
    ("log1p = true", 'log1p = "no"', "columns.price.log1p", "true or false"),
    ("log1p = true", "log1p = 1", "columns.price.log1p", "true or false"),
    ('user_key = "uid"', 'user_key = "uid"\nheader = "false"', "header", "true or false"),
    ('kind = "categorical"\nvocab = "ad"', 'kind = "categorical"\nvocab = 5', "columns.ad.vocab", "a string"),
    ('label = "clk"', "label = true", "label", "a string"),
    ('test = "test.csv"', 'test = ["test.csv", 7]', "test[1]", "a string"),
    ('group = "user"', 'group = ["user"]', "columns.gender.group", "a string"),
  ],
)
def test_schema_values_must_have_their_type(tmp_path, capfd, monkeypatch, old, new, key, wanted):
  folder = write_csv(tmp_path / "csv")
  schema = folder / "schema.toml"
  text = schema.read_text()
  assert old in text
  schema.write_text(text.replace(old, new, 1))
  code, lines = _main(tmp_path, capfd, monkeypatch, *_custom(folder))
  _one_error(code, lines, f"error: {schema} key {key}: expected {wanted}")
  _nothing_converted(tmp_path)  # refused before any value was read (so no log1p was applied)


def test_log1p_false_is_not_applied_and_a_quoted_no_is_refused(tmp_path, capfd, monkeypatch):
  folder = write_csv(tmp_path / "csv")
  schema = folder / "schema.toml"
  schema.write_text(schema.read_text().replace("log1p = true", 'log1p = "no"'))
  code, lines = _main(tmp_path, capfd, monkeypatch, *_custom(folder))
  _one_error(code, lines, "columns.price.log1p", "got the string 'no'")
  schema.write_text(schema.read_text().replace('log1p = "no"', "log1p = false"))
  _, meta = custom.build(str(folder), str(schema), params(), str(tmp_path / "cache2"))
  assert meta["stats"]["numeric_standardisation"]["price"]["mean"] == pytest.approx(505.0)  # (10 + 1000) / 2: raw


def test_log1p_on_a_column_that_is_not_numeric_is_refused(tmp_path, capfd, monkeypatch):
  folder = write_csv(tmp_path / "csv")
  schema = folder / "schema.toml"
  schema.write_text(
    schema.read_text().replace('[columns.gender]\ngroup = "user"\n', '[columns.gender]\ngroup = "user"\nlog1p = true\n')
  )
  code, lines = _main(tmp_path, capfd, monkeypatch, *_custom(folder))
  _one_error(code, lines, f"{schema} key columns.gender.log1p: log1p applies to numeric columns only")


# ------------------------------------------------------------------ (b) a duplicated column name


def test_a_duplicated_header_name_the_schema_uses(tmp_path, capfd, monkeypatch):
  folder = write_csv(tmp_path / "csv")
  for f in folder.glob("*.csv"):
    f.write_text(f.read_text().replace(HEADER, HEADER.replace("unused", "ad")))
  code, lines = _main(tmp_path, capfd, monkeypatch, *_custom(folder))
  _one_error(
    code,
    lines,
    f"{folder / 'train-0.csv'} line 1: the header names column 'ad' 2 times",
    "rename the copies in the header",
  )
  _nothing_converted(tmp_path)


def test_a_duplicated_name_in_names(tmp_path, capfd, monkeypatch):
  folder = write_csv(tmp_path / "csv")
  for f in folder.glob("*.csv"):
    f.write_text("\n".join(f.read_text().splitlines()[1:]) + "\n")
  schema = folder / "schema.toml"
  names = HEADER.replace("unused", "ad").split(",")
  schema.write_text(f"header = false\nnames = {names!r}\n".replace("'", '"') + schema.read_text())
  code, lines = _main(tmp_path, capfd, monkeypatch, *_custom(folder))
  _one_error(code, lines, f"{schema} key names: 'ad' appears 2 times", "give every column its own name")


def test_a_duplicated_parquet_column_the_schema_uses(tmp_path, capfd, monkeypatch):
  folder = write_parquet(tmp_path / "pq")
  table = pq.read_table(folder / "test.parquet")
  extra = pa.array(["u9"] * table.num_rows)  # a second "uid" column
  pq.write_table(
    pa.Table.from_arrays(table.columns + [extra], names=table.column_names + ["uid"]), folder / "test.parquet"
  )
  code, lines = _main(tmp_path, capfd, monkeypatch, *_custom(folder))
  _one_error(code, lines, f"error: {folder / 'test.parquet'}: column 'uid' appears 2 times", "rename the copies")


# ------------------------------------------------------------------ (c) the wrong file format


def test_a_csv_file_named_parquet(tmp_path, capfd, monkeypatch):
  folder = write_csv(tmp_path / "csv")
  for f in folder.glob("*.csv"):
    f.rename(f.with_suffix(".parquet"))
  schema = folder / "schema.toml"
  schema.write_text(schema.read_text().replace(".csv", ".parquet"))
  code, lines = _main(tmp_path, capfd, monkeypatch, *_custom(folder))
  _one_error(code, lines, f"error: not a Parquet file: {folder / 'train-0.parquet'}", "rename it", "format")
  _nothing_converted(tmp_path)


def test_a_parquet_file_named_csv(tmp_path, capfd, monkeypatch):
  folder = write_parquet(tmp_path / "pq")
  for f in folder.glob("*.parquet"):
    shutil.move(f, f.with_suffix(".csv"))
  schema = folder / "schema.toml"
  schema.write_text(schema.read_text().replace(".parquet", ".csv"))
  code, lines = _main(tmp_path, capfd, monkeypatch, *_custom(folder))
  _one_error(code, lines, f"{folder / 'train-0.csv'}: a Parquet file", 'set format = "parquet"')


# ------------------------------------------------------------------ (d) sizes beyond the limits


@pytest.mark.parametrize(
  "sets, needles",
  [
    (["data.max_len=1000000000000"], ["data.max_len=1000000000000 is out of range", "1..100,000"]),
    (["train.batch_size=4194304", "data.max_len=1000"], ["train.batch_size x data.max_len", "2^28"]),
    (["train.eval_batch_size=1000000000"], ["train.eval_batch_size=1000000000 is out of range", "16,777,216"]),
    (["train.eval_batch_size=0"], ["train.eval_batch_size=0 is out of range"]),
    (["model.embed_dim=1000000"], ["model.embed_dim=1000000 is out of range", "4,096"]),
    (["model.mlp=200-0"], ["model.mlp=200-0: width 0", "1..65,536"]),
    (["train.learning_rate=inf"], ["train.learning_rate=inf must be a finite number"]),
    (["train.steps=100000000000"], ["train.steps=100000000000 is out of range", "10,000,000,000"]),
  ],
)
def test_sizes_beyond_the_limits(tmp_path, capfd, monkeypatch, sets, needles):
  folder = write_csv(tmp_path / "csv")
  code, lines = _main(tmp_path, capfd, monkeypatch, *_custom(folder), *sets)
  _one_error(code, lines, *needles)
  assert not (tmp_path / "cache").exists()  # refused before any data was converted


# ------------------------------------------------------------------ (e) batch vs block size


def test_a_batch_smaller_than_a_block(tmp_path, capfd, monkeypatch):
  folder = write_csv(tmp_path / "csv")
  code, lines = _main(tmp_path, capfd, monkeypatch, *_custom(folder), "train.batch_size=3")  # custom:tiny: block 8
  _one_error(code, lines, "train.batch_size=3 must be a multiple of 8", "data.block_size=8", "use 8, 16, 32")
  assert not (tmp_path / "cache").exists()


def test_check_batch_names_the_block_size_devices_and_processes():
  check_batch(32, 8, devices=8, processes=1)
  check_batch(16, 8, devices=8, processes=2)
  with pytest.raises(
    ConfigError,
    match=r"^train.batch_size=3 must be a multiple of 8: .*data.block_size=8 .*"
    r"use 8, 16, 32",
  ):
    check_batch(3, 8)
  with pytest.raises(
    ConfigError,
    match=r"^train.batch_size=40 must be a multiple of 16: .*data.block_size=8 .*"
    r"2 processes.*over 8 devices; use 32 or 48",
  ):
    check_batch(40, 8, devices=8, processes=2)
  with pytest.raises(ConfigError, match=r"multiple of 24: .*over 24 devices; use 24, 48, 96"):
    check_batch(8, 8, devices=24)


def test_a_batch_that_does_not_split_over_the_devices_is_a_config_error():
  import jax

  from mian_jax.train import partition

  mesh = partition.make_mesh(jax.devices()[:8])
  assert partition.per_process_batch(64, mesh) == 64
  with pytest.raises(
    ConfigError,
    match=r"^batch size 100 \(train.batch_size or train.eval_batch_size\) does not "
    r"split over 8 devices; set it to a multiple of 8$",
  ):
    partition.per_process_batch(100, mesh)
  with pytest.raises(ConfigError, match=r"^train.eval_batch_size=100 does not split over 8 devices"):
    partition.per_process_batch(100, mesh, key="train.eval_batch_size")


def test_an_auxiliary_loss_on_an_encoder_that_reads_ahead(tmp_path, capfd, monkeypatch):
  """The auxiliary loss scores the next behaviour from h_t: an encoder whose h_t has read it is refused."""
  folder = write_csv(tmp_path / "csv")
  code, lines = _main(
    tmp_path, capfd, monkeypatch, *_custom(folder), "model.ibim_encoder=pre_ln", "model.ibim_aux_loss=true"
  )
  _one_error(
    code,
    lines,
    "model.ibim_aux_loss=true needs model.ibim_encoder in gru, gru_pre_ln, causal",
    "with pre_ln",
    "model.ibim_aux_loss=false",
  )
  assert not (tmp_path / "cache").exists()
