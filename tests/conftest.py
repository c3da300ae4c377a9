"""Test setup: 8 fake CPU devices (set before jax is imported) and a shared tiny commercial data set."""

import os
import sys
import tempfile
from pathlib import Path

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache for the test run, shared by the xdist workers (same run id) and the
# launch.py subprocesses the tests start: the same tiny programs are compiled once, not once per process.
_run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getpid())
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(tempfile.gettempdir()) / f"mian_jax_xla_cache_{_run_id}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
  return tmp_path_factory.mktemp("data_cache")


@pytest.fixture(scope="session")
def tiny_source(data_root):
  """The tiny commercial data set, generated once for the whole session."""
  import experiments
  from mian_jax import data

  config = experiments.get_config("commercial:tiny")
  config.data.dir = str(data_root)
  return data.open_source(config.data)
