"""Two launch.py processes over loopback (CPU collectives through gloo), 4 fake CPU devices each, train
a tiny run to the same final parameters and test metrics as one process with 8 devices (process 0 joins
through the flags, process 1 through the JAX_* environment variables); a data set process 0 fails to
build stops the other process with its error."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np

from test_e2e import ROOT, _final_params
from helpers import xla_flags


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _cmd(workdir, data_root, *extra):
  return [sys.executable, str(ROOT / "launch.py"), "--experiment", "commercial:tiny", "--workdir", str(workdir),
          "--set", f"data.dir={data_root}", "--set", "train.steps=6", *extra]


def test_two_processes_match_one_process_with_eight_devices(tmp_path, data_root):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags(4)}
  port = _free_port()
  by_flags = _cmd(tmp_path / "two", data_root, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                  "--process-id", "0")
  by_env = {**env, "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
  procs = [subprocess.Popen(cmd, cwd=ROOT, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for cmd, e in ((by_flags, env), (_cmd(tmp_path / "two", data_root), by_env))]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert "on 8 device(s)" in outs[0][0] and "final test" not in outs[1][0]  # only process 0 reports
  assert "step 6/6 (100%)" in outs[0][0] and "step " not in outs[1][0] and "eval " not in outs[1][0]  # progress too
  env8 = {**env, "XLA_FLAGS": xla_flags(8)}
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
  # near-zero gradient's rounding noise can move a weight by up to lr per step (4e-3 here; one scalar
  # weight moved 2.1e-4 on a 2-core VM): every element within 1e-3, and all but a few within 2e-4. A wrong
  # data split or reduction would move every weight by about lr, far above both.
  a, b = (np.concatenate([np.ravel(np.asarray(x)) for x in leaves]) for leaves in (la, lb))
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)
  assert np.mean(np.abs(a - b) > 2e-4 + 1e-4 * np.abs(b)) < 1e-3


def _restore_on_one_device(workdir, like):
  import orbax.checkpoint as ocp

  ckpt_dir = workdir / "checkpoints"
  step = max(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit())
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), like)
  with ocp.CheckpointManager(ckpt_dir.absolute(), item_names=("state",)) as m:
    return step, m.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))).state


def test_process_zero_failing_to_build_the_data_stops_the_others(tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags(1)}
  port = _free_port()
  cmd = lambda i: [sys.executable, str(ROOT / "launch.py"), "--experiment", "movielens:tiny", "--workdir",
                   str(tmp_path / "w"), "--set", f"data.dir={tmp_path / 'missing'}", "--coordinator",
                   f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)]
  procs = [subprocess.Popen(cmd(i), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  errs = [p.communicate(timeout=300)[1] for p in procs]
  assert [p.returncode for p in procs] == [2, 2]
  last = [e.strip().splitlines()[-1] for e in errs]
  assert last[0].startswith("error: ") and "no MovieLens files found" in last[0]
  assert last[1].startswith("error: process 0 failed while building the data set: ") and "no MovieLens files" in last[1]


def test_cluster_environments_are_recognised():
  from mian_jax.distributed import cluster_detected

  assert cluster_detected({}) is None
  slurm = {"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}
  assert cluster_detected(slurm) is None  # one task: nothing to join
  assert cluster_detected({**slurm, "SLURM_NTASKS": "4"}) == "Slurm"
  assert cluster_detected({"OMPI_MCA_orte_hnp_uri": "1.2@tcp://10.0.0.1:5", "OMPI_COMM_WORLD_SIZE": "2"}) == "Open MPI"
  assert cluster_detected({"TPU_WORKER_HOSTNAMES": "host-a,host-b"}) == "Cloud TPU"
  assert cluster_detected({"TPU_WORKER_HOSTNAMES": "host-a"}) is None
