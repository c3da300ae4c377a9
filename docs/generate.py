"""Pages the docs build writes from the code: the configuration reference (every field, its default and
its comment in mian_jax/config.py, as `--print-config` shows them)."""

from __future__ import annotations

from pathlib import Path

from mian_jax import config_fields
from mian_jax.config import Config


def config_reference() -> str:
  lines = ["# Configuration reference", "",
           "Every field `--set KEY=VALUE` takes, its package default and what it means (its comment in "
           "`mian_jax/config.py`; `python launch.py --experiment NAME --print-config` prints the same for an "
           "experiment, with that experiment's values). Generated from the code when the docs are built.", ""]
  section = None
  for key, value, doc in config_fields.fields(Config()):
    head = key.split(".")[0]
    if head != section:
      section = head
      lines += ["", f"## `{head}`", "", "| key | default | description |", "|---|---|---|"]
    shown = config_fields.as_text(value)
    lines.append(f"| `{key}` | `{shown}` | {doc.replace('|', '&#124;')} |" if shown else
                 f"| `{key}` | (empty) | {doc.replace('|', '&#124;')} |")
  return "\n".join(lines) + "\n"


def write_config_reference(path: Path) -> None:
  text = config_reference()
  if not path.exists() or path.read_text() != text:
    path.write_text(text)
