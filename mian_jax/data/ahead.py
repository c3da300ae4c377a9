"""Work done ahead of its consumer: `Ahead(source, size)` iterates `source` in a background thread, up to
`size` elements ahead of the caller.

The input path uses it to put the next batches on the devices while the current step runs (host ->
device copies overlap the step; `data.device_prefetch`). An exception raised while producing an element
is raised by the caller's `next()` after the elements before it, with its own message (a DataError still
names its shard file and record). `close()` stops the thread; it is a daemon, so a run that ends without
closing it still exits.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Iterable, Iterator

_ITEM, _END, _ERROR = range(3)


class Ahead:
  def __init__(self, source: Iterable[Any], size: int, name: str = "mian_jax-ahead"):
    if size < 1:
      raise ValueError(f"Ahead needs size >= 1, got {size}")
    self._queue: queue.Queue = queue.Queue(maxsize=size)
    self._stop = threading.Event()
    self._done = False
    self._thread = threading.Thread(target=self._run, args=(iter(source),), name=name, daemon=True)
    self._thread.start()

  def _put(self, entry: tuple[int, Any]) -> bool:
    """Queues `entry` unless closed first (False)."""
    while not self._stop.is_set():
      try:
        self._queue.put(entry, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _run(self, source: Iterator[Any]) -> None:
    try:
      for element in source:
        if not self._put((_ITEM, element)):
          return
      self._put((_END, None))
    except BaseException as e:  # raised again in the consumer, which decides what it means
      self._put((_ERROR, e))

  def __iter__(self) -> "Ahead":
    return self

  def __next__(self) -> Any:
    if self._done:
      raise StopIteration
    kind, value = self._queue.get()
    if kind == _ITEM:
      return value
    self._done = True
    if kind == _END:
      raise StopIteration
    raise value

  def close(self, timeout: float = 5.0) -> None:
    """Stops the thread (it finishes the element in hand first) and drops what it had queued."""
    self._stop.set()
    self._done = True
    while True:
      try:
        self._queue.get_nowait()
      except queue.Empty:
        break
    self._thread.join(timeout)
