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

Columns not named are ignored. Every item column needs a behaviour sequence with the same vocab (MIAN
attends from the candidate to the matching entries of the history); item attributes with no history
counterpart go to `context`. Conversion, vocabularies, OOV and caching are `tabular`'s.
"""

from __future__ import annotations

import glob
import hashlib
import tomllib
from pathlib import Path
from typing import Any

from mian_jax.data import delimited, tabular
from mian_jax.data.errors import DataError

GROUPS = ("item", "behaviour", "user", "context")
KINDS = ("categorical", "numeric", "sequence")
TOP_KEYS = {"train", "valid", "test", "format", "delimiter", "header", "names", "label", "user_key", "columns"}
COLUMN_KEYS = {"group", "kind", "vocab", "separator", "order", "log1p"}


def _fail(path: Path, key: str, message: str) -> DataError:
  return DataError(f"{path} key {key}: {message}")


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
    out += found
  return out


def load(schema_path: str | Path, folder: str | Path, p: tabular.Options) -> tuple[tabular.Spec, dict[str, list[str]]]:
  """The schema file -> (Spec, {split: files}); DataError naming the file and key of any mistake."""
  path = Path(schema_path)
  if not str(schema_path):
    raise DataError("data.schema is not set; set it to a TOML schema file (see experiments/schemas/)")
  if not path.is_file():
    raise DataError(f"data.schema={schema_path}: no such file; point it at a TOML schema file "
                    f"(see experiments/schemas/)")
  try:
    doc = tomllib.loads(path.read_text(encoding="utf-8"))
  except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
    raise DataError(f"{path}: not valid TOML ({e})") from None
  unknown = sorted(set(doc) - TOP_KEYS)
  if unknown:
    raise _fail(path, unknown[0], f"unknown key; valid: {', '.join(sorted(TOP_KEYS))}")
  folder = Path(folder)
  if not folder.is_dir():
    raise DataError(f"data.dir={folder} is not a folder; set data.dir to the folder holding your data files")
  inputs = {"train": _files(folder, doc.get("train"), path, "train"),
            "test": _files(folder, doc.get("test"), path, "test")}
  if p.holdout and "valid" in doc:
    inputs["valid"] = _files(folder, doc.get("valid"), path, "valid")
  fmt_name = doc.get("format") or Path(inputs["train"][0]).suffix.lstrip(".").lower()
  if fmt_name not in ("csv", "tsv", "txt", "parquet"):
    raise _fail(path, "format", f"{fmt_name!r} is not csv, tsv or parquet")
  fmt = None
  if fmt_name != "parquet":
    delimiter = doc.get("delimiter", "\t" if fmt_name == "tsv" else ",")
    if not isinstance(delimiter, str) or len(delimiter) != 1:
      raise _fail(path, "delimiter", f"expected one character, got {delimiter!r}")
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
      names = tuple(map(str, names))
    fmt = delimited.TextFormat(delimiter, tuple(names), header=bool(header), quoting=True)
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
    order = entry.get("order", "oldest_first")
    if order not in ("oldest_first", "newest_first"):
      raise _fail(path, f"{key}.order", f"{order!r} is not oldest_first or newest_first")
    if fmt is not None and name not in fmt.names:
      raise DataError(f"{path} key {key}: the files have no column {name!r}; they have {', '.join(fmt.names)}")
    columns.append(tabular.Column(name, name, group, kind, str(entry.get("vocab") or name) if kind != "numeric"
                                  else "", separator, order == "newest_first", bool(entry.get("log1p", False))))
  user_key = doc.get("user_key", "")
  if user_key and user_key not in table:
    columns.append(tabular.Column(user_key, user_key, "user", "categorical", user_key))
  elif not user_key:  # every row one user: gAUC equals AUC
    user_key = "user_id"
    columns.append(tabular.Column("", user_key, "user", "categorical", user_key))
  if fmt is not None:
    for c in columns:
      if c.source and c.source not in fmt.names:
        raise DataError(f"{path}: column {c.source!r} is not in the files; they have {', '.join(fmt.names)}")
  features = [c for c in columns if c.kind != "label"]
  seqs = [c for c in features if c.kind == "sequence"]
  if not seqs:
    raise _fail(path, "columns", "declare at least one behaviour sequence column")
  if not any(c.group == "item" for c in features):
    raise _fail(path, "columns", "declare at least one item column (the candidate)")
  for c in features:
    if c.group == "item" and not any(s.vocab == c.vocab for s in seqs):
      raise _fail(path, f"columns.{c.source}.vocab", f"item column {c.source!r} has no behaviour sequence with "
                  f"vocab {c.vocab!r}; give one the same vocab, or make the column a context field")
  digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
  carve = p.holdout and "valid" not in inputs
  spec = tabular.Spec(f"custom-{path.stem}-{digest}", tuple(columns), user_key, p.max_len, p.block_size, p.seed,
                      p.max_bad_rows, fmt, holdout="users" if carve else "",
                      holdout_fraction=p.holdout_fraction if carve else 0.0)
  return spec, inputs


def build(folder: str, schema: str, p: tabular.Options, cache_root: str | None = None):
  spec, inputs = load(schema, folder, p)
  return tabular.build(spec, inputs, cache_root or tabular.default_cache_root(), p.part_bytes, p.embed_user_id,
                       desc=f"converting {Path(schema).name} ({folder})")
