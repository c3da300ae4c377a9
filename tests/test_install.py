"""Installing: pyproject.toml's ranges admit what requirements.txt pins (CI installs the latter) and the JAX
stack a GPU machine ran the code with, its extras name the same jax range, the serving module needs only jax
and numpy, and nothing reaches the package through sys.path edits."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement  # pytest's own dependency: present wherever the tests run

ROOT = Path(__file__).resolve().parents[1]
# Found installed on a GPU machine that ran the code unchanged.
GPU_STACK = {"jax": "0.11.2", "jaxlib": "0.11.2", "flax": "0.12.10", "orbax-checkpoint": "0.12.4", "numpy": "2.5.0"}


def _name(requirement: Requirement) -> str:
  return requirement.name.lower().replace("_", "-")


def _pins(lines: list[str]) -> dict[str, str]:
  """{normalised name: version} of `name==version` requirement lines (extras dropped)."""
  out = {}
  for line in lines:
    found = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^\s;#]+).*", line)
    if found:
      out[found.group(1).lower().replace("_", "-")] = found.group(2)
  return out


def test_pyproject_admits_the_tested_versions_of_requirements_txt():
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  tested = _pins((ROOT / "requirements.txt").read_text().splitlines())
  runtime = {_name(r): r for r in map(Requirement, project["dependencies"])}
  assert len(runtime) == len(project["dependencies"])
  for name, r in runtime.items():
    assert name in tested, f"{name}: not in requirements.txt"
    assert r.specifier.contains(tested[name]), f"{r} leaves out the tested {name}=={tested[name]}"
    # bounded above, so a new release line is admitted only once it has been run
    assert any(s.operator in ("<", "<=", "==", "~=") for s in r.specifier), f"{r}: no upper bound"
  extras = project["optional-dependencies"]
  for extra in ("cuda12", "tpu"):
    (r,) = map(Requirement, extras[extra])
    assert r.name == "jax" and r.extras == {extra} and r.specifier == runtime["jax"].specifier
  assert _pins(extras["test"]) == {name: tested[name] for name in ("pytest", "pytest-xdist", "ruff")}
  assert list(_pins(extras["docs"])) == ["sphinx", "myst-parser"], "pinned: CI builds the docs with them"
  assert list(_pins(extras["profile"])) == ["tensorboard-plugin-profile"], "pinned, and only the profile plugin"
  assert project["requires-python"] == ">=3.11"


def test_pyproject_admits_the_jax_stack_of_the_gpu_machine():
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  runtime = {_name(r): r for r in map(Requirement, project["dependencies"])}
  for name, version in GPU_STACK.items():
    assert runtime[name].specifier.contains(version), f"{runtime[name]} leaves out {name}=={version}"


def test_serving_imports_from_outside_the_repository_without_training_packages(tmp_path):
  code = (
    "import sys, mian_jax.serving\n"
    "bad = sorted({m.split('.')[0] for m in sys.modules} & {'flax', 'optax', 'orbax', 'grain', 'tqdm', "
    "'matplotlib', 'pyarrow', 'tensorboard', 'array_record', 'experiments'})\n"
    "print(bad)\n"
  )
  out = subprocess.run(
    [sys.executable, "-c", code],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=120,
    env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"},
  )
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "[]"


def test_nothing_edits_sys_path():
  """Tests run with pytest.ini's `pythonpath = .`, benchmarks as `python -m benchmarks.NAME`."""
  found = [
    f"{path.relative_to(ROOT)}:{i}"
    for path in sorted(ROOT.rglob("*.py"))
    if not any(
      part.startswith(".") or part in ("build", "venv", "runs", "data_cache") for part in path.relative_to(ROOT).parts
    )
    for i, line in enumerate(path.read_text().splitlines(), 1)
    if re.search(r"sys\.path\.(insert|append|extend)|sys\.path\s*\+?=", line)
  ]
  assert found == []
