"""Profiling and compilation: train.profile_steps (a jax.profiler trace of the steps it names), reading a
trace back into per-op times (benchmarks/profile.py), and train.compilation_cache."""

import jax
import jax.numpy as jnp
import pytest

from benchmarks import profile
from mian_jax.config import ConfigError, apply_overrides
from mian_jax.train.report import StepTrace
from mian_jax.train.run import use_compilation_cache


@pytest.mark.parametrize("spec", ["3:2", "0:4", "4", "a:b", ":5"])
def test_profile_steps_must_be_a_range_of_steps(spec):
  import experiments

  with pytest.raises(ConfigError, match="train.profile_steps"):
    apply_overrides(experiments.get_config("commercial:tiny"), [f"train.profile_steps={spec}"])


def test_the_named_steps_are_traced_and_the_trace_reads_back_as_ops(tmp_path):
  config = apply_overrides(__import__("experiments").get_config("commercial:tiny"), ["train.profile_steps=2:3"])
  trace = StepTrace(config.train.profile_steps, tmp_path)
  step = jax.jit(lambda x: jnp.tanh(x @ x.T).sum(0))
  x, ended = jnp.ones((64, 64)), []
  for i in range(1, 6):
    trace.before(i)
    assert trace.active == (2 <= i <= 3)
    x = step(x)[:, None] * jnp.ones((1, 64))
    ended.append(trace.after(i, x))
  assert ended == [False, False, True, False, False] and not trace.close()
  assert list(tmp_path.rglob("*.xplane.pb"))  # where TensorBoard's profile plugin looks: plugins/profile/<run>/
  ops = profile.op_events(tmp_path)
  assert ops and all(ns > 0 for ns in ops.values())
  names = profile.op_names(step.lower(x).compile().as_text())
  assert any(names.get(op, "").startswith("jit(") for op in ops)  # the ops are named after the model code


def test_the_compilation_cache_folder(monkeypatch, tmp_path):
  before = jax.config.jax_compilation_cache_dir
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "env"))
  assert use_compilation_cache("~/x") == str(tmp_path / "env")  # the environment wins
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
  try:
    assert use_compilation_cache("") is None
    monkeypatch.setenv("HOME", str(tmp_path))
    assert use_compilation_cache("~/cache/xla") == str(tmp_path / "cache" / "xla")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache" / "xla")
  finally:
    jax.config.update("jax_compilation_cache_dir", before)
