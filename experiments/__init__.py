"""Experiments by name: `experiments/<name>.py` defines `get_config(variant: str = "") -> Config`.

`--experiment NAME:VARIANT` passes VARIANT (e.g. `commercial:tiny`, a seconds-long CPU run).
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path


def names() -> list[str]:
  return sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])
                if not m.name.startswith("_") and m.name != "sweeps")


def get_config(spec: str):
  name, _, variant = spec.partition(":")
  if name not in names():
    raise KeyError(name)
  config = importlib.import_module(f"experiments.{name}").get_config(variant)
  config.experiment = name
  return config
