"""The user's own CSV / TSV / Parquet files, described by a small TOML schema file (`data.schema`).

    train = ["train-*.csv"]      # files or glob patterns, relative to data.dir (or absolute)
    test = ["test.csv"]
    valid = ["valid.csv"]        # optional: the validation split (data.validation=holdout); without it a
                                 # seeded data.validation_fraction of the users is held out of train
    format = "csv"               # csv | tsv | parquet (default: from the first file's extension)
    delimiter = ","              # csv: the field separator (default "," for csv, tab for tsv)
    header = true                # csv / tsv: the first line names the columns; false: give `names`
    names = ["label", "uid", ...]  # the columns in file order, when there is no header
    label = "clk"                # the 0/1 column
    user_key = "userid"          # the column that identifies a user (gAUC); omit: one user, gAUC = AUC

    [columns.adgroup_id]         # one table per input column that becomes a feature
    group = "item"               # item | behaviour | user | context
    kind = "categorical"         # categorical | numeric | sequence (behaviour columns are sequences)
    vocab = "ad"                 # vocabulary / embedding table; columns sharing it share ids (default: own)

    [columns.click_sequence]
    group = "behaviour"
    kind = "sequence"
    vocab = "ad"                 # lines up with the candidate's adgroup_id
    separator = "^"              # between entries (a Parquet list column needs none)
    order = "oldest_first"       # or newest_first

    [columns.price]
    group = "context"
    kind = "numeric"
    log1p = true                 # log(1 + x) before standardising (heavy-tailed values)

Every value must have the type shown: strings in quotes, `header` and `log1p` the booleans true / false
(unquoted), file lists arrays of strings; a wrong type is an error naming the file and key, never
guessed from (`log1p = "no"` is refused, not read as true). A column the schema uses must appear once
in the files' header / `names` / Parquet columns.
Columns not named are ignored. Every item column needs a behaviour sequence with the same vocab (MIAN
attends from the candidate to the matching entries of the history); item attributes with no history
counterpart go to `context`. Conversion, vocabularies, OOV and caching are `tabular`'s.
"""

from __future__ import annotations

import glob
import os
import hashlib
import tomllib
from pathlib import Path
from typing import Any

from mian_jax.data import delimited, tabular
from mian_jax.errors import DataError

GROUPS = ("item", "behaviour", "user", "context")
KINDS = ("categorical", "numeric", "sequence")
# Every key and the TOML type its value must have: "string", "boolean", "number" (integer or float, never a
# boolean), "list" (an array) or "table"; a tuple allows any of them; LIST_ITEMS: what an array must hold.
TOP_TYPES: dict[str, str | tuple[str, ...]] = {
  "train": ("string", "list"),
  "valid": ("string", "list"),
  "test": ("string", "list"),
  "format": "string",
  "delimiter": "string",
  "header": "boolean",
  "names": "list",
  "label": "string",
  "user_key": "string",
  "columns": "table",
}
COLUMN_TYPES: dict[str, str | tuple[str, ...]] = {
  "group": "string",
  "kind": "string",
  "vocab": "string",
  "separator": "string",
  "order": "string",
  "log1p": "boolean",
}
LIST_ITEMS = {"train": "string", "valid": "string", "test": "string", "names": "string"}
TOP_KEYS = set(TOP_TYPES)
COLUMN_KEYS = set(COLUMN_TYPES)
_WANTED = {
  "string": 'a string in quotes, e.g. "value"',
  "boolean": "true or false (a TOML boolean, without quotes)",
  "number": "a number",
  "list": 'an array, e.g. ["a", "b"]',
  "table": "a table",
}


def _fail(path: Path, key: str, message: str) -> DataError:
  return DataError(f"{path} key {key}: {message}")


def _toml_type(value: Any) -> str:
  if isinstance(value, bool):  # before the numbers: bool is an int in Python, never in TOML
    return "boolean"
  if isinstance(value, (int, float)):
    return "number"
  return {str: "string", list: "list", dict: "table"}.get(type(value), "date/time")


def _described(value: Any) -> str:
  kind = {
    "number": "the integer" if isinstance(value, int) else "the float",
    "list": "an array",
    "table": "a table",
    "date/time": "a date/time",
  }.get(_toml_type(value), f"the {_toml_type(value)}")
  return kind if kind in ("an array", "a table") else f"{kind} {value!r}"


def _check_types(path: Path, values: dict[str, Any], types: dict[str, Any], prefix: str = "") -> None:
  """DataError naming the file, the key and the type wanted for the first value of the wrong TOML type."""
  for key, value in values.items():
    wanted = types.get(key)
    if wanted is None:
      continue  # unknown keys are refused by name elsewhere
    wanted = wanted if isinstance(wanted, tuple) else (wanted,)
    if _toml_type(value) not in wanted:
      raise _fail(path, prefix + key, f"expected {' or '.join(_WANTED[w] for w in wanted)}, got {_described(value)}")
    item = LIST_ITEMS.get(key) if not prefix else None
    if item and isinstance(value, list):
      for i, entry in enumerate(value):
        if _toml_type(entry) != item:
          raise _fail(path, f"{prefix}{key}[{i}]", f"expected {_WANTED[item]}, got {_described(entry)}")


def _first_bytes(path: str, n: int) -> bytes:
  try:
    with open(path, "rb") as stream:
      return stream.read(n)
  except OSError as e:
    raise DataError(f"{path}: cannot be read ({e.strerror or e}); check the file and its permissions") from None


def _files(folder: Path, patterns: Any, schema_path: Path, key: str) -> list[str]:
  if isinstance(patterns, str):
    patterns = [patterns]
  if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) for p in patterns):
    raise _fail(schema_path, key, "expected a file name or a list of file names / glob patterns")
  out: list[str] = []
  for pattern in patterns:
    full = pattern if Path(pattern).is_absolute() else str(folder / pattern)
    found = sorted(glob.glob(full))
    if not found:
      raise DataError(f"{schema_path} key {key}: no file matches {full}; check data.dir ({folder}) and the pattern")
    folders = [f for f in found if not Path(f).is_file()]
    if folders:
      raise DataError(f"{schema_path} key {key}: {folders[0]} is not a file; name the data files (e.g. \"*.csv\")")
    out += found
  return out


def _disjoint(inputs: dict[str, list[str]], schema_path: Path) -> None:
  """DataError when a training file is also a test or validation file (e.g. train = "*.csv" also matching the
  test files): the model would be evaluated and selected on what it trained on. Validation may read the
  test files (data.validation on the test split is the BARS protocol)."""
  trained = {os.path.realpath(f) for f in inputs["train"]}
  for split in ("valid", "test"):
    both = [f for f in inputs.get(split, []) if os.path.realpath(f) in trained]
    if both:
      raise DataError(
        f"{schema_path} keys train and {split}: both match {both[0]}; a file may not be in training "
        f"and {split} data (narrow the patterns, e.g. train = \"train-*.csv\")"
      )


def load(schema_path: str | Path, folder: str | Path, p: tabular.Options) -> tuple[tabular.Spec, dict[str, list[str]]]:
  """The schema file -> (Spec, {split: files}); DataError naming the file and key of any mistake. The steps:
  read the schema, find the files, tell their format, build the columns, check that the files hold them and
  that the groups make a model's input."""
  path, doc = _read_schema(schema_path)
  inputs = _find_inputs(path, doc, Path(folder), p.holdout)
  fmt, parquet_columns = _file_format(path, doc, inputs)
  columns, user_key = _columns(path, doc, fmt)
  _check_files_hold(path, columns, fmt, parquet_columns, inputs)
  _check_groups(path, columns)
  digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
  carve = p.holdout and "valid" not in inputs
  spec = tabular.Spec(
    f"custom-{path.stem}-{digest}",
    tuple(columns),
    user_key,
    p.max_len,
    p.block_size,
    p.seed,
    p.max_bad_rows,
    fmt,
    holdout="users" if carve else "",
    holdout_fraction=p.holdout_fraction if carve else 0.0,
  )
  return spec, inputs


def _read_schema(schema_path: str | Path) -> tuple[Path, dict[str, Any]]:
  """(path, the parsed TOML) with its keys and their types checked."""
  path = Path(schema_path)
  if not str(schema_path):
    raise DataError("data.schema is not set; set it to a TOML schema file (see experiments/schemas/)")
  if not path.is_file():
    raise DataError(
      f"data.schema={schema_path}: no such file; point it at a TOML schema file (see experiments/schemas/)"
    )
  try:
    doc = tomllib.loads(path.read_text(encoding="utf-8"))
  except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
    raise DataError(f"{path}: not valid TOML ({e})") from None
  unknown = sorted(set(doc) - TOP_KEYS)
  if unknown:
    raise _fail(path, unknown[0], f"unknown key; valid: {', '.join(sorted(TOP_KEYS))}")
  _check_types(path, doc, TOP_TYPES)
  for name, entry in (doc.get("columns") or {}).items():
    if isinstance(entry, dict):
      _check_types(path, entry, COLUMN_TYPES, f"columns.{name}.")
  return path, doc


def _find_inputs(path: Path, doc: dict[str, Any], folder: Path, holdout: bool) -> dict[str, list[str]]:
  """{split: files} under `folder` as the schema names them; no file in two splits."""
  if not folder.is_dir():
    raise DataError(f"data.dir={folder} is not a folder; set data.dir to the folder holding your data files")
  inputs = {
    "train": _files(folder, doc.get("train"), path, "train"),
    "test": _files(folder, doc.get("test"), path, "test"),
  }
  if holdout and "valid" in doc:
    inputs["valid"] = _files(folder, doc.get("valid"), path, "valid")
  _disjoint(inputs, path)
  return inputs


def _file_format(
  path: Path, doc: dict[str, Any], inputs: dict[str, list[str]]
) -> tuple[delimited.TextFormat | None, dict[str, tuple[str, ...]]]:
  """(the text format with the files' column names, None for Parquet; {Parquet file: its columns})."""
  fmt_name = doc.get("format") or Path(inputs["train"][0]).suffix.lstrip(".").lower()
  if fmt_name not in ("csv", "tsv", "txt", "parquet"):
    raise _fail(path, "format", f"{fmt_name!r} is not csv, tsv or parquet")
  fmt = None
  every_file = inputs["train"] + inputs.get("valid", []) + inputs["test"]
  parquet_columns: dict[str, tuple[str, ...]] = {}
  if fmt_name == "parquet":
    how = "format = \"parquet\"" if doc.get("format") else f"the extension of {Path(inputs['train'][0]).name}"
    hint = f"{path} reads it as Parquet ({how}); rename it, or set format = \"csv\" / \"tsv\" there"
    parquet_columns = {f: delimited.parquet_columns(f, hint) for f in dict.fromkeys(every_file)}
  else:
    delimiter = doc.get("delimiter", "\t" if fmt_name == "tsv" else ",")
    if not isinstance(delimiter, str) or len(delimiter) != 1:
      raise _fail(path, "delimiter", f"expected one character, got {delimiter!r}")
    for f in every_file:
      if _first_bytes(f, len(delimited.PARQUET_MAGIC)) == delimited.PARQUET_MAGIC:
        raise DataError(
          f"{f}: a Parquet file, but {path} reads it as {fmt_name} text; set format = \"parquet\" "
          f"there, or give {fmt_name} files"
        )
    header = doc.get("header", True)
    if header:
      names = delimited.read_header(inputs["train"][0], delimiter)
      for f in inputs["train"][1:] + inputs.get("valid", []) + inputs["test"]:
        if delimited.read_header(f, delimiter) != names:
          raise DataError(f"{f} line 1: its header differs from {Path(inputs['train'][0]).name}'s")
    else:
      names = doc.get("names")
      if not isinstance(names, list) or not names:
        raise _fail(path, "names", "header = false needs names = [the columns in file order]")
      names = tuple(names)
    fmt = delimited.TextFormat(delimiter, tuple(names), header=bool(header), quoting=True)
  return fmt, parquet_columns


def _columns(path: Path, doc: dict[str, Any], fmt: delimited.TextFormat | None) -> tuple[list[tabular.Column], str]:
  """(the label and every feature column as the schema declares them, the user key)."""
  label = doc.get("label")
  if not isinstance(label, str) or not label:
    raise _fail(path, "label", "name the 0/1 label column, e.g. label = \"clk\"")
  columns = [tabular.Column(label, "label", "label", "label")]
  table = doc.get("columns")
  if not isinstance(table, dict) or not table:
    raise _fail(path, "columns", "declare the feature columns as [columns.<name>] tables")
  for name, entry in table.items():
    key = f"columns.{name}"
    if not isinstance(entry, dict):
      raise _fail(path, key, "expected a table with group and kind")
    bad = sorted(set(entry) - COLUMN_KEYS)
    if bad:
      raise _fail(path, f"{key}.{bad[0]}", f"unknown key; valid: {', '.join(sorted(COLUMN_KEYS))}")
    group, kind = entry.get("group"), entry.get("kind", "sequence" if entry.get("group") == "behaviour" else "")
    if group not in GROUPS:
      raise _fail(path, f"{key}.group", f"{group!r} is not one of {', '.join(GROUPS)}")
    if kind not in KINDS:
      raise _fail(path, f"{key}.kind", f"{kind!r} is not one of {', '.join(KINDS)}")
    if (kind == "sequence") != (group == "behaviour"):
      raise _fail(path, f"{key}.kind", "behaviour columns are sequences and only they are")
    if kind == "numeric" and group == "item":
      raise _fail(path, f"{key}.kind", "the candidate item takes categorical columns only; put it in context")
    separator = entry.get("separator", "")
    if kind == "sequence" and fmt is not None and (not isinstance(separator, str) or not separator):
      raise _fail(path, f"{key}.separator", "a sequence in a text file needs its entry separator, e.g. \"^\"")
    if fmt is not None and separator == fmt.delimiter:
      raise _fail(path, f"{key}.separator", f"{separator!r} is also the field delimiter")
    if entry.get("log1p") and kind != "numeric":
      raise _fail(path, f"{key}.log1p", f"log1p applies to numeric columns only, and {name!r} is {kind}; remove it")
    order = entry.get("order", "oldest_first")
    if order not in ("oldest_first", "newest_first"):
      raise _fail(path, f"{key}.order", f"{order!r} is not oldest_first or newest_first")
    if fmt is not None and name not in fmt.names:
      raise DataError(f"{path} key {key}: the files have no column {name!r}; they have {', '.join(fmt.names)}")
    columns.append(
      tabular.Column(
        name,
        name,
        group,
        kind,
        str(entry.get("vocab") or name) if kind != "numeric" else "",
        separator,
        order == "newest_first",
        bool(entry.get("log1p", False)),
      )
    )
  user_key = doc.get("user_key", "")
  if user_key and user_key not in table:
    columns.append(tabular.Column(user_key, user_key, "user", "categorical", user_key))
  elif not user_key:  # every row one user: gAUC equals AUC
    user_key = "user_id"
    columns.append(tabular.Column("", user_key, "user", "categorical", user_key))
  return columns, user_key


def _check_files_hold(
  path: Path,
  columns: list[tabular.Column],
  fmt: delimited.TextFormat | None,
  parquet_columns: dict[str, tuple[str, ...]],
  inputs: dict[str, list[str]],
) -> None:
  """Every column the schema uses is in the files, once."""
  used = list(dict.fromkeys(c.source for c in columns if c.source))
  if fmt is not None:
    for c in columns:
      if c.source and c.source not in fmt.names:
        raise DataError(f"{path}: column {c.source!r} is not in the files; they have {', '.join(fmt.names)}")
    twice = delimited.duplicated(fmt.names, used)
    if twice and fmt.header:
      raise DataError(
        f"{inputs['train'][0]} line 1: the header names column {twice[0]!r} {twice[1]} times, and {path} "
        f"uses it; rename the copies in the header so that every column has its own name"
      )
    if twice:
      raise _fail(
        path,
        "names",
        f"{twice[0]!r} appears {twice[1]} times, and the schema uses it; give every column its own name in names",
      )
  for f, have in parquet_columns.items():
    missing = [u for u in used if u not in have]
    if missing:
      raise DataError(f"{f}: no column {missing[0]!r}, which {path} uses; the file has {', '.join(have)}")
    twice = delimited.duplicated(have, used)
    if twice:
      raise DataError(
        f"{f}: column {twice[0]!r} appears {twice[1]} times, and {path} uses it; rename the copies "
        f"(e.g. pyarrow's Table.rename_columns) so that every column has its own name"
      )


def _check_groups(path: Path, columns: list[tabular.Column]) -> None:
  """A behaviour sequence, a candidate item column, and a sequence sharing each item column's vocabulary."""
  features = [c for c in columns if c.kind != "label"]
  seqs = [c for c in features if c.kind == "sequence"]
  if not seqs:
    raise _fail(path, "columns", "declare at least one behaviour sequence column")
  if not any(c.group == "item" for c in features):
    raise _fail(path, "columns", "declare at least one item column (the candidate)")
  for c in features:
    if c.group == "item" and not any(s.vocab == c.vocab for s in seqs):
      raise _fail(
        path,
        f"columns.{c.source}.vocab",
        f"item column {c.source!r} has no behaviour sequence with "
        f"vocab {c.vocab!r}; give one the same vocab, or make the column a context field",
      )


def build(folder: str, schema: str, p: tabular.Options, cache_root: str):
  spec, inputs = load(schema, folder, p)
  return tabular.build(
    spec, inputs, cache_root, p.part_bytes, p.embed_user_id, desc=f"converting {Path(schema).name} ({folder})"
  )
