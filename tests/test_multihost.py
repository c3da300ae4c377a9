"""Two launch.py processes over loopback (CPU collectives through gloo), 4 fake CPU devices each, take the
same training step as one process with 8 devices (process 0 joins through the flags, process 1 through the
JAX_* environment variables); a data set process 0 fails to build stops the other process with its error.

What "the same step" means, and the tolerance each check takes from it (so that the test holds on any
processor, not by the luck of one):
- the data: both read the same global batch (the saved data positions are equal, exactly);
- the gradient: Adam's first moment after one step is (1 - b1) * g, g the gradient summed over the 8
  devices' shares. The shares are the same computation on the same rows in both runs; only the order of
  the cross-device sum differs (gloo vs in-process), and reassociating a float32 sum of 8 terms changes it
  by at most 7 * 2^-24 * sum|share| (~4e-7 relative). The test allows 1e-4 of the leaf's largest entry:
  a margin of ~100x for shares larger than their sum, while a wrong split or reduction (a process's half
  missing, a share counted twice) moves the moment by tens of percent. A leaf whose gradient sums to
  about zero (a bias a normalisation cancels: shares of ordinary size, a sum at rounding level) has no
  scale of its own, so the scale is never taken below 1e-3 of the largest entry of any leaf;
- the parameters: Adam's first step moves each weight by lr * g / (|g| + eps), at most lr. Where the
  gradient is clear of that rounding (its first moment above 10x the tolerance above) the step is the same
  to float precision; a gradient at rounding level can change sign, so elsewhere only the bound |step| <= lr
  (a difference <= 2 lr) holds;
- the test metrics, computed once by process 0, within 1e-3 (printed to 4 digits; only weights whose
  gradient was at rounding level, i.e. that do not move the loss, may differ).
"""

import json
import os
import re
import socket
import subprocess
import sys

import jax
import numpy as np

import experiments

from test_e2e import ROOT, _final_params
from helpers import xla_flags


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _cmd(workdir, data_root, *extra):
  # Without MIAN's auxiliary loss: it draws each behaviour's negative from the batch by position, and the two
  # processes' batch holds the same rows as the one process's in another order, so other negatives.
  return [
    sys.executable,
    str(ROOT / "launch.py"),
    "--experiment",
    "commercial:tiny",
    "--workdir",
    str(workdir),
    "--set",
    f"data.dir={data_root}",
    "--set",
    "train.steps=1",
    "--set",
    "train.checkpoint_every=1",
    "--set",
    "model.ibim_aux_loss=false",
    *extra,
  ]


def test_two_processes_take_the_step_of_one_process_with_eight_devices(tmp_path, data_root):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags(4)}
  port = _free_port()
  # The two processes hold their own blocks on their devices (data.placement=device); the one process reads
  # its batches from the shards (host): the same batches, so the same step.
  device = ("--set", "data.placement=device")
  by_flags = _cmd(
    tmp_path / "two",
    data_root,
    "--coordinator",
    f"127.0.0.1:{port}",
    "--num-processes",
    "2",
    "--process-id",
    "0",
    *device,
  )
  by_env = {**env, "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
  procs = [
    subprocess.Popen(cmd, cwd=ROOT, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for cmd, e in ((by_flags, env), (_cmd(tmp_path / "two", data_root, *device), by_env))
  ]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert "on 8 device(s)" in outs[0][0] and "final test" not in outs[1][0]  # only process 0 reports
  assert "step 1/1 (100%)" in outs[0][0] and "step " not in outs[1][0] and "eval " not in outs[1][0]  # progress too
  env8 = {**env, "XLA_FLAGS": xla_flags(8)}
  one = subprocess.run(
    _cmd(tmp_path / "one", data_root, "--set", "data.placement=host"),
    cwd=ROOT,
    env=env8,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert one.returncode == 0, one.stderr[-3000:]
  metrics = lambda out: {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", out.strip().splitlines()[-1])}
  got, want = metrics(outs[0][0]), metrics(one.stdout)
  assert {"auc", "gauc", "logloss"} <= set(want) and set(got) == set(want)
  for k in want:
    assert abs(got[k] - want[k]) <= 1e-3, (k, got, want)
  positions = [
    (w / "checkpoints" / "1" / "data" / "metadata").read_text() for w in (tmp_path / "two", tmp_path / "one")
  ]
  assert positions[0] == positions[1] and json.loads(positions[0])["batches"] == 1
  step_one, ref = _final_params(tmp_path / "one")
  step_two, two = _restore_on_one_device(tmp_path / "two", ref)  # written by 2 processes x 4 devices
  assert step_two == step_one == 1
  lr = experiments.get_config("commercial:tiny").train.learning_rate
  flat = lambda tree: {
    jax.tree_util.keystr(p): np.asarray(x, np.float64) for p, x in jax.tree_util.tree_leaves_with_path(tree)
  }
  p_two, p_ref, mu_two, mu_ref = (
    flat(t) for t in (two["params"], ref["params"], two["opt_state"][0]["mu"], ref["opt_state"][0]["mu"])
  )
  assert p_two.keys() == p_ref.keys() and mu_two.keys() == mu_ref.keys() and len(mu_ref) > 10
  clear, overall = 0, max(np.abs(m).max() for m in mu_ref.values())
  for name in p_ref:
    p2, p1 = p_two[name], p_ref[name]
    if name not in mu_ref:  # Dice's running statistics: a mean over the devices, summed in another order
      assert name.startswith("['batch_stats']"), name
      np.testing.assert_allclose(p2, p1, rtol=0, atol=1e-4 * np.abs(p1).max(), err_msg=name)
      continue
    m2, m1 = mu_two[name], mu_ref[name]
    scale = np.abs(m1).max()
    assert scale > 0, f"{name}: no gradient"
    tol = 1e-4 * max(scale, 1e-3 * overall)  # a leaf whose gradient sums to ~0 keeps its shares' rounding
    np.testing.assert_allclose(m2, m1, rtol=0, atol=tol, err_msg=f"the summed gradient of {name}")
    assert np.abs(p2 - p1).max() <= 2 * lr * (1 + 1e-3), f"{name}: moved by more than Adam's bound"
    sure = np.abs(m1) > 10 * tol  # its sign is certain: the step is lr * sign(g), up to Adam's eps
    np.testing.assert_allclose(p2[sure], p1[sure], rtol=1e-5, atol=1e-6, err_msg=f"the step of {name}")
    clear += sure.sum()
  assert clear > 1000  # the strict check covers the bulk of the touched weights


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
  cmd = lambda i: [
    sys.executable,
    str(ROOT / "launch.py"),
    "--experiment",
    "movielens:tiny",
    "--workdir",
    str(tmp_path / "w"),
    "--set",
    f"data.dir={tmp_path / 'missing'}",
    "--coordinator",
    f"127.0.0.1:{port}",
    "--num-processes",
    "2",
    "--process-id",
    str(i),
  ]
  procs = [
    subprocess.Popen(cmd(i), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for i in range(2)
  ]
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
