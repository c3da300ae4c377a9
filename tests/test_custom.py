"""The `custom` path: a TOML schema over the user's CSV / Parquet files (groups, kinds, shared
vocabularies, numeric standardisation, sequence order), schema mistakes named by file and key, and the
real Alimama and DIN-layout samples in ../shared/data when present."""

import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import launch, decode_split
from mian_jax.data import custom, pipeline, tabular

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

SCHEMA = """
train = ["train-*.{ext}"]
test = "test.{ext}"
label = "clk"
user_key = "uid"

[columns.ad]
group = "item"
kind = "categorical"
vocab = "ad"

[columns.clicks]
group = "behaviour"
kind = "sequence"
vocab = "ad"
separator = "|"
order = "newest_first"

[columns.gender]
group = "user"
kind = "categorical"

[columns.title]
group = "context"
kind = "categorical"

[columns.price]
group = "context"
kind = "numeric"
log1p = true
"""

HEADER = "clk,uid,ad,clicks,gender,title,price,unused"
TRAIN = [
  '1,u1,a1,a2|a3,F,"red, large",10,x',
  '0,u1,a2,a1|a2|a3|a4,F,plain,,x',
  '1,u2,a1,,M,plain,1000,x',
  '0,u2,a3,a1,M,"red, large",nan,x',
]
TEST = ['1,u1,a9,a9|a1,F,new title,5,x', '0,u3,a2,a3,X,plain,inf,x']


def write_csv(folder: Path) -> Path:
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "train-0.csv").write_text("\n".join([HEADER] + TRAIN[:2]) + "\n")
  (folder / "train-1.csv").write_text("\n".join([HEADER] + TRAIN[2:]) + "\n")
  (folder / "test.csv").write_text("\n".join([HEADER] + TEST) + "\n")
  (folder / "schema.toml").write_text(SCHEMA.replace("{ext}", "csv"))
  return folder


def write_parquet(folder: Path) -> Path:
  """The same rows as Parquet: integer labels, a list column for the history, real NaN / inf."""
  folder.mkdir(parents=True, exist_ok=True)
  import csv

  def table(lines):
    rows = list(csv.reader(lines))
    return pa.table(
      {
        "clk": pa.array([int(r[0]) for r in rows], pa.int64()),
        "uid": [r[1] for r in rows],
        "ad": [r[2] for r in rows],
        "clicks": pa.array([r[3].split("|") if r[3] else [] for r in rows], pa.list_(pa.string())),
        "gender": [r[4] for r in rows],
        "title": [r[5] for r in rows],
        "price": pa.array([float(r[6]) if r[6] else None for r in rows], pa.float64()),
      }
    )

  pq.write_table(table(TRAIN[:2]), folder / "train-0.parquet")
  pq.write_table(table(TRAIN[2:]), folder / "train-1.parquet")
  pq.write_table(table(TEST), folder / "test.parquet")
  (folder / "schema.toml").write_text(SCHEMA.replace("{ext}", "parquet").replace('separator = "|"\n', ""))
  return folder


def params(**kw) -> tabular.Options:
  return tabular.Options(
    **{**dict(max_len=3, block_size=1, seed=0, max_bad_rows=0, part_bytes=1 << 20, embed_user_id=False), **kw}
  )


def build(folder: Path, cache: Path, **kw):
  return custom.build(str(folder), str(folder / "schema.toml"), params(**kw), str(cache))


def test_csv_columns_become_features_with_shared_vocab_order_numeric_and_oov(tmp_path):
  folder = write_csv(tmp_path / "csv")
  d, meta = build(folder, tmp_path / "cache")
  st = meta["stats"]
  schema = {f["name"]: f for f in meta["schema"]["features"]}
  assert schema["ad"]["table"] == schema["clicks"]["table"] == "ad" and schema["clicks"]["kind"] == "sequence"
  assert schema["price"]["kind"] == "numeric" and schema["title"]["group"] == "context"
  assert schema["uid"]["group"] == "user" and not schema["uid"]["embed"] and meta["schema"]["user_key"] == "uid"
  assert "unused" not in schema
  # ad vocabulary from training candidates and histories: a1 x4, a2 x3, a3 x3, a4 x1 -> a1, a2, a3, a4.
  assert st["vocabularies"]["ad"] == 4 and st["vocabularies"]["title"] == 2  # "red, large" stays one value
  test = decode_split(d, meta, "test")
  assert test["ad"].tolist() == [0, 2]  # a9 is OOV
  # newest_first "a9|a1": stored oldest first -> [a1, a9] = [1, 0]
  assert test["hist_len"].tolist() == [2, 1] and test["clicks"][0, :2].tolist() == [1, 0]
  assert test["gender"][1] == 0 and test["title"][0] == 0 and test["uid"][1] == 0  # unseen values
  assert st["oov"]["test"]["ad"] == 1 and st["oov"]["test"]["clicks"] == 1 and st["oov"]["test"]["uid"] == 1
  # price: log1p, standardised by the training values present (10 and 1000); missing / NaN / inf -> 0.
  logs = np.log1p([10.0, 1000.0])
  mean, std = logs.mean(), logs.std()
  assert math.isclose(st["numeric_standardisation"]["price"]["mean"], mean)
  assert np.allclose(test["price"], [(np.log1p(5.0) - mean) / std, 0.0], atol=1e-6)
  assert st["nonfinite_numeric"] == {"train": {"price": 2}, "valid": {"price": 0}, "test": {"price": 1}}
  train = decode_split(d, meta, "train")
  assert sorted(train["label"].tolist()) == [0, 0, 1, 1] and train["hist_len"].max() == 3  # a1|a2|a3|a4 cut to 3
  row = int(np.flatnonzero(train["hist_len"] == 3)[0])
  assert train["clicks"][row].tolist() == [3, 2, 1]  # newest first a1|a2|a3|a4: a1..a3 kept, stored oldest first


def test_parquet_gives_the_same_data_as_csv(tmp_path):
  a = build(write_csv(tmp_path / "csv"), tmp_path / "c1")
  b = build(write_parquet(tmp_path / "pq"), tmp_path / "c2")
  assert a[1]["stats"]["vocabularies"] == b[1]["stats"]["vocabularies"]
  for split in ("train", "test"):
    x, y = decode_split(*a, split), decode_split(*b, split)
    order_x, order_y = np.lexsort((x["ad"], x["uid"])), np.lexsort((y["ad"], y["uid"]))
    for k in x:
      np.testing.assert_allclose(x[k][order_x], y[k][order_y], err_msg=k)


@pytest.mark.parametrize(
  "edit, message",
  [
    (lambda s: "shuffle = true\n" + s, r"schema.toml key shuffle: unknown key"),
    (lambda s: s.replace('group = "user"', 'group = "profile"'), r"key columns.gender.group: 'profile' is not one of"),
    (
      lambda s: s.replace('vocab = "ad"\nseparator', 'vocab = "clicked"\nseparator'),
      r"key columns.ad.vocab: item column 'ad' has no behaviour sequence with vocab 'ad'",
    ),
    (lambda s: s.replace("[columns.title]", "[columns.headline]"), r"key columns.headline: the files have no column"),
    (lambda s: s.replace('test = "test.csv"', 'test = "nope-*.csv"'), r"key test: no file matches .*nope-\*.csv"),
    (lambda s: s.replace('label = "clk"', ""), r"key label: name the 0/1 label column"),
    (lambda s: s.replace('separator = "|"', 'separator = ","'), r"columns.clicks.separator: ',' is also the field"),
    (lambda s: s.replace("[columns.gender]", "[columns.gender"), r"schema.toml: not valid TOML"),
    (
      lambda s: s.replace('train = ["train-*.csv"]', 'train = ["*.csv"]'),
      r"schema.toml keys train and test: both match .*test.csv; a file may not be in training and test data",
    ),
  ],
)
def test_schema_mistakes_name_the_file_and_key(tmp_path, edit, message):
  folder = write_csv(tmp_path / "csv")
  (folder / "schema.toml").write_text(edit((folder / "schema.toml").read_text()))
  with pytest.raises(pipeline.DataError, match=message):
    build(folder, tmp_path / "cache")
  assert not (tmp_path / "cache").exists()  # refused before anything is written


def test_bad_values_name_file_and_line(tmp_path):
  folder = write_csv(tmp_path / "csv")
  with open(folder / "train-1.csv", "a") as f:
    f.write("1,u3,a1,a2,F,plain,cheap,x\n")
  with pytest.raises(pipeline.DataError, match=r"^train-1.csv line 4: price='cheap' is not a number"):
    build(folder, tmp_path / "cache")
  _, meta = build(folder, tmp_path / "cache", max_bad_rows=1)
  assert meta["stats"]["bad_rows"]["count"] == 1 and meta["stats"]["rows"]["train"] == 4


def test_real_alimama_rows_train_through_launch(tmp_path):
  folder = SHARED / "alimama-samples" / "tiny_csv"
  if not (folder / "train_sample.csv").exists():
    pytest.skip(f"{folder} is absent (real Alimama rows, not part of the repository)")
  run = launch(tmp_path, "custom:tiny", f"data.dir={folder}", "train.epochs=2")
  assert run.returncode == 0, run.stderr
  assert run.stdout.strip().splitlines()[-1].startswith("final test auc=")
  import json

  stats = json.loads(next((tmp_path / "cache").glob("custom-alimama-*/stats.json")).read_text())
  assert stats["rows"]["test"] == 100 and stats["bad_rows"]["count"] == 0
  assert stats["vocabularies"]["userid"] > 10 and stats["numeric_standardisation"]["price"]["std"] > 0


def test_real_din_layout_sample_through_a_schema(tmp_path):
  shared = SHARED / "amazon-electronics-din-sample"
  if not (shared / "sample_data.txt").exists():
    pytest.skip(f"{shared} is absent (the DIN-layout Amazon sample, not part of the repository)")
  folder = tmp_path / "din"  # the sample, as a training file and a test file (one file may not be both)
  folder.mkdir()
  for name in ("train.txt", "test.txt"):
    shutil.copyfile(shared / "sample_data.txt", folder / name)
  schema = tmp_path / "din.toml"
  schema.write_text(
    """
train = "train.txt"
test = "test.txt"
format = "csv"
delimiter = ";"
header = false
names = ["hist_items", "hist_cates", "item", "cate", "label"]
label = "label"

[columns.item]
group = "item"
[columns.item.vocab]
""".replace("[columns.item.vocab]\n", 'kind = "categorical"\nvocab = "item"\n')
    + """
[columns.cate]
group = "item"
kind = "categorical"
vocab = "cate"

[columns.hist_items]
group = "behaviour"
vocab = "item"
separator = " "

[columns.hist_cates]
group = "behaviour"
vocab = "cate"
separator = " "
"""
  )
  d, meta = custom.build(str(folder), str(schema), params(max_len=20, block_size=10), str(tmp_path / "cache"))
  st = meta["stats"]
  assert st["rows"] == {"train": 100, "valid": 0, "test": 100} and st["bad_rows"]["count"] == 0
  assert st["oov"]["test"]["item"] == 0 and 0 < st["label_rate"]["test"] < 1
  assert meta["schema"]["user_key"] == "user_id"  # no user column: one user for all rows (gAUC = AUC)
  test = decode_split(d, meta, "test")
  first = (shared / "sample_data.txt").read_text().splitlines()[0].split(";")
  assert test["hist_len"][0] == len(first[0].split()) and test["label"][0] == float(first[4])


def test_records_to_score_are_encoded_with_the_training_vocabularies_in_file_order(tmp_path):
  """--predict on files: every row, in file order, with the trained vocabularies and standardisation."""
  folder = write_csv(tmp_path / "in")
  directory, meta = build(folder, tmp_path / "cache")
  trained_test = decode_split(directory, meta, "test")
  enc_dir, enc_meta = tabular.encode_records(directory, [str(folder / "test.csv")], str(tmp_path / "cache"), 1 << 20)
  again = decode_split(enc_dir, enc_meta, "test")
  for k in trained_test:  # the same rows as the conversion's own test split, the same ids and values
    np.testing.assert_array_equal(again[k], trained_test[k], err_msg=k)
  reversed_csv = tmp_path / "reversed.csv"
  reversed_csv.write_text("\n".join([HEADER] + TEST[::-1]) + "\n")
  rev_dir, rev_meta = tabular.encode_records(directory, [str(reversed_csv)], str(tmp_path / "cache"), 1 << 20)
  rev = decode_split(rev_dir, rev_meta, "test")
  np.testing.assert_array_equal(rev["ad"], trained_test["ad"][::-1])  # file order kept
  bad = tmp_path / "bad.csv"
  bad.write_text("\n".join([HEADER, TEST[0], "1,u1,a1"]) + "\n")
  with pytest.raises(pipeline.DataError, match="bad.csv line 3"):  # no row may be dropped when scoring
    tabular.encode_records(directory, [str(bad)], str(tmp_path / "cache"), 1 << 20)


@pytest.mark.parametrize("how", ["cr_only", "stray_cr"])
def test_carriage_returns_in_a_header_are_one_error_line(tmp_path, how):
  folder = write_csv(tmp_path / "csv")
  lines = (folder / "train-0.csv").read_text().splitlines()
  if how == "cr_only":
    (folder / "train-0.csv").write_bytes(("\r".join(lines) + "\r").encode())
  else:
    (folder / "train-0.csv").write_bytes(
      (lines[0].replace(",", "\r,", 1) + "\n" + "\n".join(lines[1:]) + "\n").encode()
    )
  with pytest.raises(pipeline.DataError, match=r"train-0.csv line 1: the header holds a carriage return .* LF or CRLF"):
    build(folder, tmp_path / "cache")


def _replace_column(path: Path, name: str, array: pa.Array) -> None:
  table = pq.read_table(path)
  pq.write_table(table.set_column(table.column_names.index(name), name, array), path)


@pytest.mark.parametrize(
  "column, array, message",
  [
    (
      "clk",
      pa.array([[1], [0]], pa.list_(pa.int64())),
      r"column 'clk': type list<\w+: int64> cannot be read as a label",
    ),
    (
      "clicks",
      pa.array([[["a2"]], [["a1"]]], pa.list_(pa.list_(pa.string()))),
      r"column 'clicks': values of type list<\w+: string> cannot be read as a sequence",
    ),
    ("price", pa.array([[1.0], [2.0]], pa.list_(pa.float64())), r"column 'price': type list<\w+: double> cannot"),
    (
      "gender",
      pa.array([b"\xff\xfe", b"M"], pa.binary()),
      r"column 'gender': type binary cannot be read as a categorical",
    ),
    (
      "gender",
      pa.array([{"x": 1}, {"x": 2}], pa.struct([("x", pa.int64())])),
      r"column 'gender': type struct<x: int64>",
    ),
  ],
)
def test_parquet_columns_of_a_type_their_kind_cannot_read_are_one_error(tmp_path, column, array, message):
  folder = write_parquet(tmp_path / "pq")
  _replace_column(folder / "train-0.parquet", column, array)
  with pytest.raises(pipeline.DataError, match=rf"train-0.parquet {message}.*convert the column"):
    build(folder, tmp_path / "cache")


def test_a_missing_behaviour_is_a_bad_row_naming_its_line(tmp_path):
  """A null entry in a Parquet history and an empty one in a CSV history (`a1||a2`, `|`) are bad rows: counted
  against data.max_bad_rows, never read as padding that counts in the history's length."""
  folder = write_parquet(tmp_path / "pq")
  _replace_column(folder / "train-1.parquet", "clicks", pa.array([[], ["a1", None, "a2"]], pa.list_(pa.string())))
  with pytest.raises(
    pipeline.DataError,
    match=r"train-1.parquet row 2: clicks holds a missing behaviour \(entry 1 is "
    r"empty\); leave missing behaviours out of the history",
  ):
    build(folder, tmp_path / "cache")
  _, meta = build(folder, tmp_path / "cache", max_bad_rows=1)
  assert meta["stats"]["bad_rows"]["count"] == 1 and meta["stats"]["rows"]["train"] == 3
  for history in ("a1||a2", "|"):
    folder = write_csv(tmp_path / f"csv{len(history)}")
    lines = (folder / "train-0.csv").read_text().splitlines()
    lines[2] = lines[2].replace("a1|a2|a3|a4", history)
    (folder / "train-0.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(pipeline.DataError, match=r"train-0.csv line 3: clicks holds a missing behaviour"):
      build(folder, tmp_path / f"cache{len(history)}")
