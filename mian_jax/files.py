"""Files the project writes and reads back: written atomically, read tolerantly, and folders it may
write into.

- `write_text` / `write_json` / `write_with`: a temporary file beside the target, fsynced and renamed over it, so a
  full disk or a kill leaves the previous version or the new one, never half of one. A failed write is
  an OSError naming the target (launch.py prints it as one `error:` line).
- `read_json`: a damaged JSON file is a `Damaged` error naming the file (callers decide: redo the work
  or stop with the name).
- `read_jsonl` / `append_jsonl`: `metrics.jsonl` is appended to (one line per event); a torn line (a
  full disk or a kill in the middle of a write) is dropped and counted, so a damaged log never stops a
  run; the trainer rewrites the file without it on resume.
- `claim`: the project writes only into a folder that is new, empty, or holds a previous artefact of
  the same kind (a run, a sweep, an export: each recognised by a file only the project writes there);
  anything else is `NotOurs`, and nothing is written or removed.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

from mian_jax.errors import DataError, Error


class Damaged(DataError):
  """A file the project wrote earlier cannot be read back (torn or edited); the message names it."""


class NotOurs(Error, ValueError):
  """A folder holds files the project did not write; the message names the folder and one such file."""


@functools.cache
def umask() -> int:
  """This process's umask (read from /proc where it can be, so that no other thread ever sees it at 0)."""
  try:
    for line in Path("/proc/self/status").read_text().splitlines():
      if line.startswith("Umask:"):
        return int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def file_mode() -> int:
  """The mode a plain open() would give a new file (0644 under the usual umask 022): temporary files are
  made 0600, and a file renamed over its target would keep that, unreadable for a serving account."""
  return 0o666 & ~umask()


def folder_mode() -> int:
  """The mode a plain mkdir would give a new folder (0755 under umask 022); see file_mode."""
  return 0o777 & ~umask()


def _reraise_named(e: OSError, path: Path) -> OSError:
  return OSError(e.errno, e.strerror or str(e), str(path))


def write_text(path: str | Path, text: str) -> None:
  """Writes `text` to `path` atomically (a temporary file beside it, fsynced, then renamed)."""
  write_with(path, lambda f: f.write(text))


def write_with(
  path: str | Path,
  write: Callable[[IO[Any]], Any],
  put_in_place: Callable[[Callable[[], None]], Any] = lambda rename: rename(),
  newline: str | None = None,
  binary: bool = False,
) -> None:
  """`write(f)` into a new temporary file beside `path` (never a file of someone else's), fsynced, then
  renamed over `path` by `put_in_place(rename)` (e.g. `interrupts.commit`); the temporary file is removed
  when anything fails or is interrupted, and a failed write is an OSError naming `path`. `binary`: f takes
  bytes (a picture)."""
  path = Path(path)
  fd, tmp = -1, None
  try:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, file_mode())
    with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", newline=newline) as f:
      fd = -1
      write(f)
      f.flush()
      os.fsync(f.fileno())
    put_in_place(lambda: os.replace(tmp, path))
    tmp = None
  except OSError as e:
    raise _reraise_named(e, path) from None
  finally:
    if fd >= 0:
      os.close(fd)
    if tmp is not None and os.path.exists(tmp):
      os.unlink(tmp)


def write_json(path: str | Path, obj: Any) -> None:
  write_text(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: str | Path) -> Any:
  """The JSON value in `path`; `Damaged` naming the file when it cannot be parsed."""
  path = Path(path)
  try:
    return json.loads(path.read_text())
  except (ValueError, UnicodeDecodeError) as e:
    raise Damaged(f"{path} is damaged ({e})") from None


def read_jsonl(path: str | Path) -> tuple[list[dict[str, Any]], int]:
  """(the events of a JSON-lines file, how many lines could not be read). A missing file has none."""
  path = Path(path)
  if not path.exists():
    return [], 0
  events, torn = [], 0
  for line in path.read_text(errors="replace").splitlines():
    if not line.strip():
      continue
    try:
      event = json.loads(line)
    except ValueError:
      torn += 1
      continue
    if isinstance(event, dict):
      events.append(event)
    else:
      torn += 1
  return events, torn


def append_jsonl(path: str | Path, event: dict[str, Any]) -> None:
  """Appends one event as one line; a failed write is an OSError naming `path`."""
  path = Path(path)
  try:
    with path.open("a") as f:
      f.write(json.dumps(event) + "\n")
  except OSError as e:
    raise _reraise_named(e, path) from None


def claim(folder: str | Path, kind: str, ours: Callable[[Path], bool], fix: str) -> Path:
  """Checks that the project may write `kind` into `folder`: it does not exist, is empty, or `ours(folder)`
  (it holds a previous artefact of the same kind). Otherwise `NotOurs` (`kind`: "a run", "an export", ...), naming a file found there and
  `fix`. Returns the folder as a Path; creates nothing."""
  folder = Path(folder)
  if folder.exists() and not folder.is_dir():
    raise NotOurs(f"{folder} is a file, not a folder; {fix}")
  if not folder.is_dir() or ours(folder):
    return folder
  try:
    sample = next(iter(sorted(folder.iterdir())), None)
  except OSError as e:
    raise NotOurs(f"{folder} cannot be read ({e.strerror}); {fix}") from None
  if sample is None:
    return folder
  raise NotOurs(f"{folder} holds files that are not {kind}'s (e.g. {sample.name}), so nothing is written there; {fix}")


class Busy(Error):
  """Another process holds a folder's lock (`Exclusive`)."""


class Exclusive:
  """An OS file lock on `path` (a lock file, created when missing) for as long as the block runs: a second
  holder is refused at once with `Busy(busy.format(owner=...))`, naming the holder's pid and host. The lock
  ends with its process, kill -9 included."""

  def __init__(self, path: str | Path, busy: str):
    self.path, self.busy = Path(path), busy
    self._fd: int | None = None

  def __enter__(self) -> "Exclusive":
    import fcntl
    import socket

    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      owner = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
      os.close(fd)
      raise Busy(self.busy.format(owner=owner)) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    self._fd = fd
    return self

  def __exit__(self, *exc) -> None:
    import fcntl

    if self._fd is not None:
      os.ftruncate(self._fd, 0)
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None
