"""Freed batch memory reused, not returned to the system and faulted in again.

glibc serves an allocation above its mmap threshold (128 KiB at first, raised as large blocks are freed)
with fresh pages from the kernel and hands them back when it is freed, so every batch of the input path
(MiB-sized arrays, made and dropped hundreds of times a second) pays one page fault per 4 KiB written.
In a virtual machine a fault costs microseconds: measured on a 2-core VM, it doubled the decode of a
batch (README, "The input path"). `keep_freed_memory()` raises both thresholds once per process so that
blocks up to 32 MiB come from the heap and stay mapped for the next batch; memory is then returned to
the system only when more than 1 GiB of the heap's top is free. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # the largest block glibc serves from the heap (the most it accepts on 64-bit)
TRIM_THRESHOLD = 1 << 30


@functools.cache
def keep_freed_memory() -> bool:
  """Sets glibc's thresholds (once; True when they were set, False where there is no glibc)."""
  if not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # musl and others: no mallopt
    return False
  return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
