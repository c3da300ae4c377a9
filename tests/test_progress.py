"""Progress in a log file (stdout not a terminal): plain lines every `every` units and when done, a line per
finished data shard or part; a bar on a terminal; nothing from a process other than process 0. (A
launch.py run's step and evaluation lines in a pipe: test_results.py.)"""

import re

import pytest

from mian_jax import progress
from mian_jax.data import shards


def test_the_line_says_where_how_fast_and_how_long():
  fields = ("loss=0.4123", "3,712 samples/s")
  assert (
    progress.line("", "step", 300, 951, fields, elapsed=74.2, done=300)
    == "step 300/951 (31%) loss=0.4123 3,712 samples/s eta 2m41s"
  )
  assert (
    progress.line("generating", "shard", 16, 16, (), elapsed=40.4, done=16) == "generating: shard 16/16 (100%) in 40s"
  )
  assert (
    progress.line("reading reviews", "line", 2_000_000, None, (), elapsed=3725, done=2_000_000)
    == "reading reviews: 2,000,000 lines in 1h02m"
  )
  assert progress.line("", "step", 0, 10, (), elapsed=1.0, done=0) == "step 0/10 (0%)"  # no pace yet: no eta
  assert [progress.duration(s) for s in (0, 41, 161, 3600, 3725)] == ["0s", "41s", "2m41s", "1h00m", "1h02m"]


def test_a_log_file_gets_a_line_every_n_units_and_at_the_end(capsys):
  with progress.Progress(10, "step", every=3, initial=1) as bar:  # resumed at step 1
    for _ in range(9):
      bar.update(1, "loss=0.5")
  out = capsys.readouterr()
  steps = [int(re.match(r"step (\d+)/10 \(\d+%\) loss=0.5 (eta|in) ", l).group(1)) for l in out.out.splitlines()]
  assert steps == [3, 6, 9, 10] and out.err == ""
  with progress.Progress(10, "step", every=4) as bar:  # stopped early: the last count when closed
    for _ in range(5):
      bar.update()
  assert [l.split(" (")[0] for l in capsys.readouterr().out.splitlines()] == ["step 4/10", "step 5/10"]


def test_a_terminal_gets_a_bar_and_other_processes_get_nothing(capsys, monkeypatch):
  monkeypatch.setattr(progress, "terminal", lambda: True)
  with progress.Progress(4, "step") as bar:
    assert bar.bar is not None  # a tqdm bar (drawn on stderr when that is a terminal)
    bar.update(4)
  assert capsys.readouterr().out == ""
  monkeypatch.setattr(progress, "terminal", lambda: False)
  monkeypatch.setattr(progress, "lead", lambda: False)
  with progress.Progress(4, "step") as bar:
    bar.update(4)
  progress.say("only process 0 says this")
  assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("workers", [1, 2])
def test_data_builders_print_a_line_per_finished_shard_or_part(capsys, monkeypatch, workers):
  monkeypatch.setattr("os.cpu_count", lambda: workers)
  assert shards.parallel_map(abs, [1, -2, 3], "generating", unit="shard") == [1, 2, 3]
  lines = capsys.readouterr().out.splitlines()
  assert [l.split(" (")[0] for l in lines] == [f"generating: shard {i}/3" for i in (1, 2, 3)]
  assert lines[-1].startswith("generating: shard 3/3 (100%) in ")
