"""Experiments by name: `experiments/<name>.py` defines `get_config(variant: str = "") -> Config`.

`--experiment NAME:VARIANT` passes VARIANT (e.g. `commercial:tiny`, a seconds-long CPU run).
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path


def names() -> list[str]:
  return sorted(
    m.name
    for m in pkgutil.iter_modules([str(Path(__file__).parent)])
    if not m.name.startswith("_") and m.name != "sweeps"
  )


def get_config(spec: str):
  """The config of `NAME[:VARIANT]`; config.experiment is the spec (the default workdir is named by it).
  KeyError for an unknown NAME, ValueError for an unknown VARIANT."""
  name, _, variant = spec.partition(":")
  if name not in names():
    raise KeyError(name)
  config = importlib.import_module(f"experiments.{name}").get_config(variant)
  config.experiment = f"{name}:{variant}" if variant else name
  return config


def note(spec: str) -> str | None:
  """The first line of every command on a tiny variant: its numbers are not results."""
  if spec.partition(":")[2] != "tiny":
    return None
  return (
    f"note: {spec} is a seconds-long smoke run of a shrunk model on little data; its metrics (AUC below 0.5 "
    f"included) only show that the machinery works and say nothing about the model"
  )
