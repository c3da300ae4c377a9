"""Two launch.py processes over loopback (CPU collectives through gloo), 4 fake CPU devices each, train
a tiny run to the same final parameters and test metrics as one process with 8 devices."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np

from test_e2e import ROOT, _final_params


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _cmd(workdir, data_root, *extra):
  return [sys.executable, str(ROOT / "launch.py"), "--experiment", "commercial:tiny", "--workdir", str(workdir),
          "--set", f"data.dir={data_root}", "--set", "train.steps=6", *extra]


def test_two_processes_match_one_process_with_eight_devices(tmp_path, data_root):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  port = _free_port()
  procs = [subprocess.Popen(_cmd(tmp_path / "two", data_root, "--coordinator", f"127.0.0.1:{port}",
                                 "--num-processes", "2", "--process-id", str(i)),
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert "on 8 device(s)" in outs[0][0] and "final test" not in outs[1][0]  # only process 0 reports
  env8 = {**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  one = subprocess.run(_cmd(tmp_path / "one", data_root), cwd=ROOT, env=env8, capture_output=True, text=True,
                       timeout=600)
  assert one.returncode == 0, one.stderr[-3000:]
  final = lambda out: out.strip().splitlines()[-1]
  assert final(outs[0][0]) == final(one.stdout)  # the same test AUC / gAUC / logloss, computed once
  step_one, ref = _final_params(tmp_path / "one")
  step_two, two = _restore_on_one_device(tmp_path / "two", ref)  # written by 2 processes x 4 devices
  assert step_two == step_one == 6
  la, lb = jax.tree.leaves(two["params"]), jax.tree.leaves(ref["params"])
  assert len(la) == len(lb) > 10
  # Equal up to the order of the cross-process sums (gloo vs in-process): Adam divides by sqrt(v), so a
  # near-zero gradient's rounding noise can move a weight by up to lr per step (4e-3 here); a wrong data
  # split or reduction would move every weight by about that much, far above this tolerance.
  for a, b in zip(la, lb):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=2e-4)


def _restore_on_one_device(workdir, like):
  import orbax.checkpoint as ocp

  ckpt_dir = workdir / "checkpoints"
  step = max(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit())
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), like)
  with ocp.CheckpointManager(ckpt_dir.absolute(), item_names=("state",)) as m:
    return step, m.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))).state
