"""SIGTERM and Ctrl-C in every phase of a run.

- `install()` (launch.py, first thing): SIGTERM / SIGINT raise `Interrupted` (a BaseException, so no
  `except Exception` swallows it) wherever the main thread is: building the data set, compiling,
  restoring, the final evaluation, exporting. Each phase's cleanup runs as the exception passes (worker
  processes are stopped, temporary files removed); launch.py prints one line naming the phase and what
  was kept, and exits with EXIT_PREEMPTED.
- `Deferred()` (the training loop): inside it a signal only sets a flag, checked after every step; the
  loop then saves a checkpoint and exits with EXIT_PREEMPTED.
- In both, a second Ctrl-C ends the process at once with EXIT_KILLED (the last complete checkpoint and
  finished data shards stay valid: both are renamed into place only when complete).
- `held()` (Orbax's checkpoint reads): inside it a signal is recorded and raised as Interrupted when the
  block ends, as an exception raised inside Orbax's coroutines would leave its event loop half torn
  down (tracebacks of unawaited reads, at times "Event loop is closed" instead of the signal's line).
- `phase(name)`: what the process is doing, for the line printed on interruption.
- `commit(put_in_place)` (--export, --predict): the renames that put a complete output in place run with
  signals held back, and from then on the run's work is done: a signal no longer stops it (it exits 0 with
  the output complete), so exit 75 always means that nothing was replaced.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Callable, TypeVar

from mian_jax.errors import EXIT_KILLED

T = TypeVar("T")

_current = ["starting"]
_seen: list[int] = []
# The first signal's Interrupted until the caller has it (`delivered`). A signal handled while Python runs
# a garbage-collector callback (JAX registers one) has its exception printed and dropped ("Exception
# ignored in ... _xla_gc_callback"); `check` raises it again at the next phase, so it is never lost.
_pending: list["Interrupted"] = []


class Interrupted(BaseException):
  def __init__(self, signum: int, during: str):
    super().__init__(signum, during)
    self.signum, self.during = signum, during

  @property
  def name(self) -> str:
    return "Ctrl-C" if self.signum == signal.SIGINT else signal.Signals(self.signum).name


# The file descriptor of the process's real stderr: 2, or its copy while checkpoint.stderr_held holds fd 2.
error_fd = [2]


def _killed() -> None:
  sys.stdout.flush()
  line = (
    "error: stopped at once by a second Ctrl-C; the last complete checkpoint and finished data shards are "
    "kept, rerun to resume\n"
  )
  os.write(error_fd[-1], line.encode())
  os._exit(EXIT_KILLED)


def _raise(signum, frame):
  if _seen and signum == signal.SIGINT:
    _killed()
  first = not _seen
  _seen.append(signum)
  if first:  # a second SIGTERM while the first one's cleanup runs is ignored
    _pending.append(Interrupted(signum, _current[0]))
    raise _pending[-1]


def _quiet_when_pending(hook):
  """sys.unraisablehook that stays silent about a dropped Interrupted (raised again by `check`)."""

  def quiet(unraisable):
    if not isinstance(unraisable.exc_value, Interrupted):
      hook(unraisable)

  quiet._mian_jax = True
  return quiet


def check() -> None:
  """Raises the first signal's Interrupted again when it has not reached the caller (see _pending)."""
  if _pending:
    raise _pending[-1]


def delivered() -> None:
  """The caller has the Interrupted (launch.py): nothing is raised again."""
  _pending.clear()


def install() -> dict:
  """SIGTERM / SIGINT raise Interrupted from now on (main thread only); returns the previous handlers
  (for `restore`, when the caller is not the whole process, e.g. a test calling launch.main)."""
  _seen.clear()
  _pending.clear()
  _current[0] = "starting"
  if not getattr(sys.unraisablehook, "_mian_jax", False):
    sys.unraisablehook = _quiet_when_pending(sys.unraisablehook)
  return {sig: signal.signal(sig, _raise) for sig in (signal.SIGTERM, signal.SIGINT)}


def restore(handlers: dict) -> None:
  for sig, handler in handlers.items():
    signal.signal(sig, handler)


def ignore() -> None:
  """SIGTERM / SIGINT ignored from now on: for a process whose work is done and that only exits."""
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, signal.SIG_IGN)


def _after_commit(signum, frame):
  if _seen and signum == signal.SIGINT:
    _killed()
  _seen.append(signum)


def commit(put_in_place: Callable[[], T]) -> T:
  """Runs `put_in_place()` (the renames that put a complete output where it belongs) with signals held back;
  in a run whose handlers `install` set, signals are held back for the rest of the process too (its work is
  done: it only prints and exits 0), and a signal whose exception was dropped earlier is dropped for good.
  Other callers (a library user, a test) keep their own handlers."""
  if signal.getsignal(signal.SIGTERM) is not _raise:
    return put_in_place()
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, _after_commit)
  _pending.clear()
  return put_in_place()


def set_phase(name: str) -> None:
  """Names what the process does from now on (first raising a signal's Interrupted that was dropped)."""
  check()
  _current[0] = name


@contextlib.contextmanager
def phase(name: str):
  """Names what the process does while the block runs (first raising a signal's Interrupted that was
  dropped)."""
  check()
  before, _current[0] = _current[0], name
  try:
    yield
  finally:
    _current[0] = before


@contextlib.contextmanager
def held():
  """Runs the block with SIGTERM / SIGINT recorded instead of raised; when it ends, the first one is raised
  as Interrupted (naming the current phase). A second Ctrl-C still ends the process at once. Without
  `install`'s handlers (a library user, a test calling the code directly) the block runs as it is."""
  if signal.getsignal(signal.SIGTERM) is not _raise:
    yield
    return
  got: list[int] = []

  def hold(signum, frame):
    if (got or _seen) and signum == signal.SIGINT:
      _killed()
    got.append(signum)

  old = {sig: signal.signal(sig, hold) for sig in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield
  finally:
    restore(old)
  if got:
    _raise(got[0], None)


class Deferred:
  """Signals set `self.signal` instead of interrupting (checked by the training loop after each step); a
  second Ctrl-C ends the process at once. On leaving, the previous handlers come back, unless a signal
  arrived: then a late second Ctrl-C during shutdown still ends the process at once."""

  def __init__(self):
    self.signal: int | None = None
    self._old = {}

  def __enter__(self) -> "Deferred":
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._old[sig] = signal.signal(sig, self._handle)
    if _pending:  # a signal whose exception was dropped before the loop: the loop stops after its first step
      self.signal = _pending[-1].signum
      _pending.clear()
    return self

  def _handle(self, signum, frame):
    if (self.signal is not None or _seen) and signum == signal.SIGINT:
      _killed()
    self.signal = signum

  def __exit__(self, *exc):
    if self.signal is None:
      for sig, handler in self._old.items():
        signal.signal(sig, handler)
