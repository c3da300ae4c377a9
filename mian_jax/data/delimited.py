"""Streaming reads of delimited text (TSV, CSV) and Parquet files, in parts that workers read in parallel.

A text file is cut into byte ranges that start at line starts (`parts`), each read in chunks of about
`CHUNK_BYTES` by pyarrow's CSV parser (every column as a string). Line numbers stay exact: the parts
know their first line, and a chunk whose row count does not match its line count (blank lines) or that
pyarrow refuses (a wrong column count, bytes that are not UTF-8) is read again line by line in Python,
which names the line and the reason of every bad row. Bad rows raise `DataError` unless the
`BadRows` budget (`data.max_bad_rows`) allows skipping them; skipped rows are counted.
A field must not hold a line break (quoted newlines are not supported: cutting at line starts needs that).
Parquet files are read by row groups (`iter_batches`); their "line" is the 1-based row number.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mian_jax.errors import DataError

CHUNK_BYTES = 8 << 20
PARQUET_MAGIC = b"PAR1"  # a Parquet file's first (and last) four bytes
SKIP_HINT = "fix the input, or set data.max_bad_rows=N to skip up to N bad rows"


@dataclasses.dataclass(frozen=True)
class TextFormat:
  delimiter: str
  names: tuple[str, ...]  # the columns, in file order
  header: bool  # the first line is a header (skipped; `names` came from it)
  quoting: bool = True  # '"' quotes fields (CSV); False for layouts that never quote (DIEN's TSV)


@dataclasses.dataclass(frozen=True)
class Part:
  """A piece of one input file: text bytes [start, end) whose first line is `first_line`, or Parquet
  row groups [start, end) whose first row is `first_line`."""

  path: str
  kind: str  # "text" | "parquet"
  start: int
  end: int
  first_line: int


@dataclasses.dataclass
class Chunk:
  table: pa.Table  # text: every column a string; Parquet: the file's own types
  lines: np.ndarray  # int64 [rows]: the line (text) or row (Parquet) number of each row, 1-based
  path: str


class BadRows:
  """Counts bad rows; raises `DataError` on the first one beyond `limit` (data.max_bad_rows)."""

  def __init__(self, limit: int):
    self.limit, self.count, self.examples = limit, 0, []

  def add(self, path: str, line: int, reason: str, unit: str = "line") -> None:
    where = f"{Path(path).name} {unit} {line}"
    self.count += 1
    if len(self.examples) < 5:
      self.examples.append(f"{where}: {reason}")
    if self.count > self.limit:
      more = f" (more than data.max_bad_rows={self.limit})" if self.limit else ""
      raise DataError(f"{where}: {reason}{more}; {SKIP_HINT}")


def _word(delimiter: str) -> str:
  return {"\t": "tab", ",": "comma", ";": "semicolon", "|": "'|'"}.get(delimiter, repr(delimiter))


def read_header(path: str | Path, delimiter: str) -> tuple[str, ...]:
  with open(path, "rb") as f:
    first = f.readline()
  if first.startswith(PARQUET_MAGIC):
    raise DataError(
      f"{Path(path).name} line 1: this is a Parquet file (it starts with {PARQUET_MAGIC.decode()}), "
      f"not CSV / TSV text; name it .parquet, or set format = \"parquet\" in the schema"
    )
  try:
    text = first.decode("utf-8-sig").rstrip("\r\n")
  except UnicodeDecodeError:
    raise DataError(f"{Path(path).name} line 1: the header is not valid UTF-8; save the file as UTF-8") from None
  if not text.strip():
    raise DataError(f"{Path(path).name} line 1: the header is empty; the first line must name the columns")
  if "\r" in text:
    raise DataError(
      f"{Path(path).name} line 1: the header holds a carriage return (CR-only line endings, or a "
      f"stray \\r); save the file with LF or CRLF line endings"
    )
  try:
    return tuple(c.strip() for c in next(csv.reader([text], delimiter=delimiter)))
  except csv.Error as e:
    raise DataError(f"{Path(path).name} line 1: the header cannot be read as CSV ({e}); fix the first line") from None


def text_parts(path: str | Path, fmt: TextFormat, part_bytes: int) -> list[Part]:
  """Byte ranges of about `part_bytes`, each starting at a line start, with their first line numbers."""
  path = str(path)
  size = Path(path).stat().st_size
  with open(path, "rb") as f:
    start = len(f.readline()) if fmt.header else 0
    bounds = [start]
    target = start + part_bytes
    while target < size:
      f.seek(target - 1)
      f.readline()  # to the next line start (target-1 so a boundary already at a line start is kept)
      if f.tell() >= size:
        break
      if f.tell() > bounds[-1]:
        bounds.append(f.tell())
      target = max(target + part_bytes, f.tell() + 1)
    bounds.append(size)
    first_lines, line = [], 2 if fmt.header else 1
    for a, b in zip(bounds[:-1], bounds[1:]):
      first_lines.append(line)
      f.seek(a)
      remaining = b - a
      while remaining:
        data = f.read(min(remaining, CHUNK_BYTES))
        remaining -= len(data)
        line += data.count(b"\n")
  return [Part(path, "text", a, b, n) for a, b, n in zip(bounds[:-1], bounds[1:], first_lines) if b > a]


def duplicated(names: tuple[str, ...] | list[str], used: Iterable[str]) -> tuple[str, int] | None:
  """(name, count) of the first of `used` that `names` holds more than once (pyarrow cannot select it), else None."""
  for name in used:
    count = list(names).count(name)
    if count > 1:
      return name, count
  return None


def _not_parquet(path: str | Path, e: Exception, hint: str) -> DataError:
  reason = str(e).splitlines()[0] if str(e) else type(e).__name__
  return DataError(f"not a Parquet file: {path} ({reason}); {hint}")


NOT_PARQUET_HINT = "rename it (.csv / .tsv for delimited text), or set format in the schema"


def parquet_columns(path: str | Path, hint: str = NOT_PARQUET_HINT) -> tuple[str, ...]:
  """The top-level column names of Parquet file `path`; DataError (with `hint`) if it is not one."""
  try:
    return tuple(pq.read_schema(path).names)
  except pa.ArrowException as e:
    raise _not_parquet(path, e, hint) from None
  except OSError as e:
    raise DataError(f"{path}: cannot be read ({e.strerror or e}); check the file and its permissions") from None


def parquet_parts(path: str | Path, groups_per_part: int = 1) -> list[Part]:
  try:
    meta = pq.ParquetFile(path).metadata
  except pa.ArrowException as e:
    raise _not_parquet(path, e, NOT_PARQUET_HINT) from None
  except OSError as e:
    raise DataError(f"{path}: cannot be read ({e.strerror or e}); check the file and its permissions") from None
  rows = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
  starts = np.concatenate([[0], np.cumsum(rows)]).astype(int)
  return [
    Part(str(path), "parquet", g, min(g + groups_per_part, len(rows)), int(starts[g]) + 1)
    for g in range(0, len(rows), groups_per_part)
  ]


def read(part: Part, fmt: TextFormat | None, bad: BadRows, columns: tuple[str, ...] | None = None) -> Iterator[Chunk]:
  """The rows of `part` in chunks, bad rows skipped (counted in `bad`) or raised."""
  if part.kind == "parquet":
    yield from _read_parquet(part, columns)
    return
  assert fmt is not None
  with open(part.path, "rb") as f:
    f.seek(part.start)
    remaining, carry, line = part.end - part.start, b"", part.first_line
    while remaining or carry:
      data = f.read(min(remaining, CHUNK_BYTES)) if remaining else b""
      remaining -= len(data)
      data = carry + data
      cut = data.rfind(b"\n") + 1 if remaining else len(data)
      if remaining and cut == 0:  # one line longer than a chunk: read on
        carry = data
        continue
      data, carry = data[:cut], data[cut:]
      if data:
        yield _parse(data, line, part.path, fmt, bad)
        line += data.count(b"\n")


def _parse(data: bytes, line: int, path: str, fmt: TextFormat, bad: BadRows) -> Chunk:
  newlines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
  try:
    table = pacsv.read_csv(
      pa.py_buffer(data),
      read_options=pacsv.ReadOptions(column_names=list(fmt.names), use_threads=False, block_size=len(data) + 1),
      parse_options=pacsv.ParseOptions(delimiter=fmt.delimiter, quote_char='"' if fmt.quoting else False),
      convert_options=pacsv.ConvertOptions(
        column_types={n: pa.string() for n in fmt.names}, strings_can_be_null=False, quoted_strings_can_be_null=False
      ),
    )
    if table.num_rows == newlines:
      return Chunk(table, np.arange(line, line + newlines, dtype=np.int64), path)
  except (pa.ArrowInvalid, pa.ArrowTypeError):
    pass  # a bad row somewhere in the chunk: the line-by-line reader below names it (or skips it)
  return _parse_slowly(data, line, path, fmt, bad)


def _parse_slowly(data: bytes, line: int, path: str, fmt: TextFormat, bad: BadRows) -> Chunk:
  """Line by line: exact line numbers and reasons for the rows pyarrow refused; blank lines skipped."""
  cols: list[list[str]] = [[] for _ in fmt.names]
  lines: list[int] = []
  quote = {"quotechar": '"'} if fmt.quoting else {"quoting": csv.QUOTE_NONE}
  for number, raw in enumerate(io.BytesIO(data), line):
    try:
      text = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as e:
      bad.add(path, number, f"byte {e.start + 1} is not valid UTF-8 (save the file as UTF-8)")
      continue
    if not text.strip():
      continue
    try:
      fields = next(csv.reader([text], delimiter=fmt.delimiter, strict=True, **quote))
    except csv.Error as e:
      bad.add(path, number, f"cannot be parsed ({e})")
      continue
    if len(fields) != len(fmt.names):
      bad.add(path, number, f"expected {len(fmt.names)} {_word(fmt.delimiter)}-separated fields, got {len(fields)}")
      continue
    for col, value in zip(cols, fields):
      col.append(value)
    lines.append(number)
  table = pa.table({n: pa.array(c, pa.string()) for n, c in zip(fmt.names, cols)})
  return Chunk(table, np.asarray(lines, np.int64), path)


def _read_parquet(part: Part, columns: tuple[str, ...] | None) -> Iterator[Chunk]:
  row = part.first_line
  for batch in pq.ParquetFile(part.path).iter_batches(
    row_groups=range(part.start, part.end), columns=list(columns) if columns else None
  ):
    table = pa.Table.from_batches([batch])
    yield Chunk(table, np.arange(row, row + table.num_rows, dtype=np.int64), part.path)
    row += table.num_rows
