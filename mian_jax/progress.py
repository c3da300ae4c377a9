"""Progress that reads well on a terminal and in a log file: `Progress` counts training steps, data shards
and parts, and evaluation batches; `say` prints the lines between them.

- stdout is a terminal: tqdm bars, drawn as tqdm draws them (on stderr); `say` writes above them.
- stdout is a file or a pipe (`> log.txt`, nohup, Slurm, a sweep trial's log): no bar (tqdm would print
  nothing there, or carriage-return noise), but one plain line every `every` units and one when done,
  flushed at once:
      step 300/951 (31%) loss=0.4123 3,712 samples/s eta 2m41s
      generating commercial data (361,344 samples): shard 3/16 (18%) eta 40s
      eval test: batch 12/12 (100%) 108,544 rows in 3s
- Multi-host: process 0 only; the other processes print nothing.
- It never imports jax (the converters' worker processes do not load it): the process index is asked of jax
  only in a process that already imported it.
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def lead() -> bool:
  """True in process 0 of a multi-host run, and in a single process."""
  jax = sys.modules.get("jax")
  return jax is None or jax.process_index() == 0


def terminal() -> bool:
  """stdout is a terminal (bars), not a file or a pipe (plain lines)."""
  try:
    return sys.stdout.isatty()
  except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
    return False


def say(message: str) -> None:
  """A line on stdout from process 0 (above a progress bar, if one is drawn), flushed."""
  if not lead():
    return
  if terminal():
    tqdm.write(message, file=sys.stdout)
  else:
    print(message)
  sys.stdout.flush()


def duration(seconds: float) -> str:
  """41s, 2m41s, 1h02m."""
  s = max(0, round(seconds))
  if s < 60:
    return f"{s}s"
  if s < 3600:
    return f"{s // 60}m{s % 60:02d}s"
  return f"{s // 3600}h{s % 3600 // 60:02d}m"


def line(
  desc: str,
  unit: str,
  n: int,
  total: int | None,
  fields: tuple[str, ...] = (),
  elapsed: float | None = None,
  done: int | None = None,
) -> str:
  """One plain progress line: `[desc: ]unit n/total (p%) [fields] eta T`, or `... in T` when n reaches
  total; without a total `[desc: ]n units [fields]`. The eta assumes the pace of the `done` units counted
  in `elapsed` seconds (this process's, not a resumed run's earlier ones)."""
  head = f"{desc}: " if desc else ""
  if total:
    text = f"{head}{unit} {n:,}/{total:,} ({100 * n // total}%)"
  else:
    text = f"{head}{n:,} {unit}s"
  text += "".join(f" {f}" for f in fields)
  if elapsed is not None and ((total and n >= total) or not total):
    text += f" in {duration(elapsed)}"
  elif elapsed is not None and done:
    text += f" eta {duration(elapsed / done * (total - n))}"
  return text


class Progress:
  """A bar on a terminal, or its plain lines in a file (module docstring). `update(n, *fields)` after n more
  units; `fields` (e.g. "loss=0.4123") are shown beside the count until replaced. A context manager;
  `close()` prints the last line if the latest count has not been printed."""

  def __init__(
    self,
    total: int | None,
    unit: str,
    desc: str = "",
    *,
    initial: int = 0,
    every: int = 1,
    fields: tuple[str, ...] = (),
    leave: bool = True,
  ):
    self.total, self.unit, self.desc, self.every = total, unit, desc, max(1, every)
    self.n = self.shown = self.initial = initial
    self.fields = fields
    self.t0 = time.perf_counter()
    is_lead = lead()
    self.plain = is_lead and not terminal()
    self.bar = None
    if is_lead and not self.plain:
      self.bar = tqdm(
        total=total, initial=initial, desc=desc or None, unit=f" {unit}", disable=None, dynamic_ncols=True, leave=leave
      )
      if fields:
        self.bar.set_postfix_str(", ".join(fields), refresh=False)

  def __enter__(self) -> "Progress":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def update(self, n: int = 1, *fields: str) -> None:
    self.n += n
    if fields:
      self.fields = fields
    if self.bar is not None:
      if fields:
        self.bar.set_postfix_str(", ".join(fields), refresh=False)
      self.bar.update(n)
    elif self.plain and (self.n // self.every > self.shown // self.every or self.n == self.total):
      self._print()

  def _print(self) -> None:
    self.shown = self.n
    print(
      line(self.desc, self.unit, self.n, self.total, self.fields, time.perf_counter() - self.t0, self.n - self.initial),
      flush=True,
    )

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
      self.bar = None
    elif self.plain and self.n != self.shown:
      self._print()
    self.plain = False  # closed: prints nothing more


def counted(items: Iterable[T], unit: str, desc: str = "", *, total: int | None = None, every: int = 1) -> Iterator[T]:
  """`items`, counted by a Progress (a line every `every` items in a log file)."""
  with Progress(total, unit, desc, every=every) as bar:
    for item in items:
      yield item
      bar.update()
