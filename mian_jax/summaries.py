"""TensorBoard event files without TensorFlow: scalars written with the `tensorboard` package's own
event-file writer and protos (what `tensorboard --logdir runs` reads).

`Scalars(logdir)` writes `events.out.tfevents.*` files into `logdir`; `write(step, {tag: value})` adds
one scalar per tag (None and non-finite values are skipped); `close()` flushes. Tags are grouped by
their prefix in TensorBoard (`train/loss`, `test/auc`, ...).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Mapping

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class Scalars:
  def __init__(self, logdir: str | Path):
    Path(logdir).mkdir(parents=True, exist_ok=True)
    self._writer = EventFileWriter(str(logdir))

  def write(self, step: int, values: Mapping[str, float | None]) -> None:
    summary = Summary(
      value=[
        Summary.Value(tag=tag, simple_value=float(v))
        for tag, v in values.items()
        if isinstance(v, (int, float)) and math.isfinite(v)
      ]
    )
    if summary.value:
      self._writer.add_event(Event(wall_time=time.time(), step=int(step), summary=summary))

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()
