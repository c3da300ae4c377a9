"""The project's errors and exit codes, in one place (import-light: converter worker processes load it).

Every error the user can act on is an `Error`: its message is one line saying what, where (file, line,
key) and how to fix it, and it carries the exit code `launch.py` ends with. The kinds:

    ConfigError   the configuration or the command line              exit 2
    DataError     input files, shards, data-set folders               exit 2
    RunError      the workdir, checkpoints, the run's state           exit 2
      Diverged    a non-finite loss, gradient or prediction           exit 3

Exit codes (README "When things go wrong"): 0 done; 1 a sweep with failed trials; 2 an `error:` line;
3 diverged; 75 interrupted by SIGTERM / Ctrl-C in any phase (what was finished is kept; rerun); 130 a
second Ctrl-C.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_TRIALS_FAILED = 1
EXIT_ERROR = 2
EXIT_DIVERGED = 3
EXIT_PREEMPTED = 75
EXIT_KILLED = 130


class Error(Exception):
  """A mistake or fault the user can act on; `str(e)` is the one-line message."""

  exit_code = EXIT_ERROR


class ConfigError(Error, ValueError):
  """A user mistake in the configuration or on the command line."""


class DataError(Error, ValueError):
  """Unusable data on disk or in the input files."""


class RunError(Error, RuntimeError):
  """The run cannot go on: its workdir, its checkpoints or its state."""


class Diverged(RunError):
  """A non-finite loss or gradient (train.on_nonfinite=stop) or non-finite predictions."""

  exit_code = EXIT_DIVERGED
