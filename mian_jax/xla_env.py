"""XLA flags set before JAX starts: `apply()` is the first thing launch.py (and the benchmarks) run.

The f32 scatter-add's atomic on NVIDIA GPUs. jaxlib 0.10.2 to 0.11.0 (requirements.txt pins 0.10.2) ship an
LLVM that compiles the f32 atomic add of a scatter to a compare-and-swap retry loop unless denormals are
flushed; under many updates to the same rows (an embedding's gradient: every sample of a batch hits the
41 rows of the commercial item table) it was reported 450-2000x slower than the native `atom.add.f32`
(openxla/xla#46225, jax-ml/jax#38806). LLVM's `-nvptx-allow-ftz-atomics` gives the native atomic back;
what it changes is that a denormal partial sum inside an atomic add may become 0, as it did before 0.10.2.
`apply()` adds it to XLA_FLAGS (`--xla_backend_extra_options`) when a JAX CUDA plugin of an affected
version is installed, unless XLA_FLAGS already names it or MIAN_JAX_NATIVE_ATOMICS=0 (the CAS loop; for
a comparison: benchmarks/accelerator.sh measures both). On CPU / TPU nothing is set.
"""

from __future__ import annotations

import os
import re
from importlib import metadata, util

FTZ_ATOMICS = "-nvptx-allow-ftz-atomics"
EXTRA = "--xla_backend_extra_options="
AFFECTED = ((0, 10, 2), (0, 11, 0))  # jaxlib versions whose LLVM emits the CAS loop


def _version(text: str) -> tuple[int, ...]:
  m = re.match(r"(\d+)\.(\d+)\.(\d+)", text)
  return tuple(int(x) for x in m.groups()) if m else ()


def with_native_atomics(xla_flags: str) -> str:
  """xla_flags with FTZ_ATOMICS added to --xla_backend_extra_options (created, or appended to)."""
  if FTZ_ATOMICS in xla_flags:
    return xla_flags
  tokens = xla_flags.split()
  for i, token in enumerate(tokens):
    if token.startswith(EXTRA):
      value = token[len(EXTRA) :]
      tokens[i] = EXTRA + (f"{value},{FTZ_ATOMICS}" if value else FTZ_ATOMICS)
      return " ".join(tokens)
  return " ".join([*tokens, EXTRA + FTZ_ATOMICS])


def wanted(jaxlib_version: str, cuda: bool, opt_out: str) -> bool:
  """Whether to add FTZ_ATOMICS: a CUDA plugin, an affected jaxlib, and no MIAN_JAX_NATIVE_ATOMICS=0."""
  lo, hi = AFFECTED
  return cuda and opt_out != "0" and lo <= _version(jaxlib_version) <= hi


def apply(environ: dict | None = None) -> None:
  """Sets XLA_FLAGS in `environ` (os.environ) as the module docstring says; call it before JAX starts."""
  environ = os.environ if environ is None else environ
  cuda = any(util.find_spec(f"jax_cuda{v}_plugin") is not None for v in (12, 13))
  if not cuda:
    return
  try:
    version = metadata.version("jaxlib")
  except metadata.PackageNotFoundError:
    return
  if wanted(version, cuda, environ.get("MIAN_JAX_NATIVE_ATOMICS", "")):
    environ["XLA_FLAGS"] = with_native_atomics(environ.get("XLA_FLAGS", ""))
