"""XLA flags set before JAX starts (mian_jax/xla_env.py): the native f32 atomic for GPU scatter-adds is asked
for only with a CUDA plugin of an affected jaxlib, added to the user's own flags without losing any, and
left out with MIAN_JAX_NATIVE_ATOMICS=0."""

from importlib import metadata, util

from mian_jax import xla_env

FLAG = "--xla_backend_extra_options=-nvptx-allow-ftz-atomics"


def test_the_flag_joins_the_users_flags():
  assert xla_env.with_native_atomics("") == FLAG
  assert xla_env.with_native_atomics("--xla_foo=1") == f"--xla_foo=1 {FLAG}"
  mixed = "--xla_backend_extra_options=a=1 --xla_force_host_platform_device_count=8"
  assert xla_env.with_native_atomics(mixed) == (
    "--xla_backend_extra_options=a=1,-nvptx-allow-ftz-atomics --xla_force_host_platform_device_count=8"
  )
  assert xla_env.with_native_atomics(f"--xla_foo {FLAG}") == f"--xla_foo {FLAG}"  # named already: unchanged


def test_only_affected_versions_with_cuda_and_no_opt_out():
  assert xla_env.wanted("0.10.2", True, "") and xla_env.wanted("0.11.0", True, "1")
  assert not xla_env.wanted("0.10.1", True, "") and not xla_env.wanted("0.11.1", True, "")
  assert not xla_env.wanted("0.10.2", False, "") and not xla_env.wanted("0.10.2", True, "0")


def test_apply_sets_xla_flags_only_where_a_cuda_plugin_is(monkeypatch):
  env = {"XLA_FLAGS": "--xla_foo"}
  real = util.find_spec
  has_cuda = real("jax_cuda12_plugin") is not None or real("jax_cuda13_plugin") is not None
  xla_env.apply(env)
  assert (env["XLA_FLAGS"] == f"--xla_foo {FLAG}") == (
    has_cuda and xla_env.wanted(metadata.version("jaxlib"), True, "")
  )
  # as on a GPU machine with the pinned jaxlib: the plugin found, the version affected
  monkeypatch.setattr(util, "find_spec", lambda name: object() if name == "jax_cuda12_plugin" else real(name))
  monkeypatch.setattr(metadata, "version", lambda name: "0.10.2")
  gpu = {"XLA_FLAGS": "--xla_foo"}
  xla_env.apply(gpu)
  assert gpu["XLA_FLAGS"] == f"--xla_foo {FLAG}"
  out = {"MIAN_JAX_NATIVE_ATOMICS": "0"}
  xla_env.apply(out)
  assert "XLA_FLAGS" not in out
