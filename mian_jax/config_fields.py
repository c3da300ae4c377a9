"""Every config field with its value and its description, for `--print-config` and `--set` suggestions.

A field's description is its comment in `mian_jax/config.py`: the comment at the end of its line, else
the comment lines right above it (no blank line between). Keeping the words beside the code they describe
means one place to change; `tests/test_first_hour.py` fails when a field has none.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import tokenize
from typing import Any

from mian_jax import config as config_lib


@functools.cache
def _comments() -> dict[str, dict[str, str]]:
  """{dataclass name: {field: description}} read from config.py's source."""
  source = inspect.getsource(config_lib)
  lines = source.splitlines()
  trailing = {
    tok.start[0]: tok.string.lstrip("#").strip()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline)
    if tok.type == tokenize.COMMENT and lines[tok.start[0] - 1].strip() != tok.string.strip()
  }
  out: dict[str, dict[str, str]] = {}
  for cls in ast.parse(source).body:
    if not isinstance(cls, ast.ClassDef):
      continue
    docs = out.setdefault(cls.name, {})
    for node in cls.body:
      if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
        continue
      end = [trailing[n] for n in range(node.lineno, node.end_lineno + 1) if n in trailing]
      above = []
      n = node.lineno - 1
      while n >= 1 and lines[n - 1].strip().startswith("#"):
        above.insert(0, lines[n - 1].strip().lstrip("#").strip())
        n -= 1
      docs[node.target.id] = " ".join(end or above)
  return out


def fields(config: config_lib.Config) -> list[tuple[str, Any, str]]:
  """(dotted key, value, description) of every leaf field of `config`, in declaration order; the
  description is "" where config.py has no comment for the field."""
  out: list[tuple[str, Any, str]] = []

  def walk(obj: Any, prefix: str) -> None:
    docs = _comments().get(type(obj).__name__, {})
    for f in dataclasses.fields(obj):
      value = getattr(obj, f.name)
      if dataclasses.is_dataclass(value):
        walk(value, f"{prefix}{f.name}.")
      else:
        out.append((prefix + f.name, value, docs.get(f.name, "")))

  walk(config, "")
  return out


def as_text(value: Any) -> str:
  """A value as `--set` takes it: true / false, widths joined by ',', strings bare."""
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, tuple):
    return ",".join(map(str, value))
  return str(value)


def render(config: config_lib.Config) -> str:
  """`--print-config`: one line per field, `key=value  # description` (grep-friendly), under a header."""
  rows = [(f"{key}={as_text(value)}", doc) for key, value, doc in fields(config)]
  width = min(48, max(len(kv) for kv, _ in rows))
  head = (
    f"# {config.experiment or 'config'}: every field as --set KEY=VALUE takes it, with what it means "
    f"(experiment is chosen with --experiment, not --set)"
  )
  return "\n".join([head] + [f"{kv:<{width}}  # {doc}" for kv, doc in rows])
