"""data.placement=device gives, to the bit, the host path's batches: training batches gathered inside a jitted
function from a process's resident blocks equal `pipeline.train_iterator`'s (several starts, 1 and 2
processes, 1 and 8 devices, max_len cutting the stored histories), evaluation batches `eval_batches`' (padding
rows included); values read as 0 are counted per batch as the host path counts them, data.oov=error names
the same record; k steps in one call equal k calls of one step; auto / device choose and refuse by size."""

import jax
import numpy as np
import pytest

import experiments
from helpers import plant
from mian_jax.data import pipeline, resident
from mian_jax.errors import DataError
from mian_jax.train import on_device, partition
from mian_jax.train.run import Run, choose_placement
from test_bad_input import _dirty, _source
from test_input_path import _assert_same


def _same(got, expected):
  """Equal fields, dtypes and values (a jitted function returns its dict in sorted key order)."""
  _assert_same(dict(sorted(got.items())), dict(sorted(expected.items())))


def _gather_fn(src, max_len, mesh, valid=False):
  data = partition.batch_sharding(mesh)
  if valid:
    return jax.jit(
      lambda store, rows, ok: on_device.gather(src.schema, max_len, mesh, store, rows, ok),
      in_shardings=(on_device.store_sharding(mesh), data, data),
    )
  return jax.jit(
    lambda store, rows: on_device.gather(src.schema, max_len, mesh, store, rows),
    in_shardings=(on_device.store_sharding(mesh), data),
  )


@pytest.mark.parametrize("devices", [1, 8])
def test_training_batches_equal_the_host_path(tiny_source, devices):
  mesh = partition.make_mesh(jax.devices()[:devices])
  block = tiny_source.block_size()
  k, n = 2, len(tiny_source.blocks("train"))  # 194 blocks of 32: 97 batches an epoch (48 with 2 processes)
  for start, max_len, count in ((0, 10, 1), (7, 4, 1), (3, 10, 2)):
    gather = _gather_fn(tiny_source, max_len, mesh)
    for index in range(count):
      blocks = resident.train_blocks(tiny_source, 5, k, start, start + 200, index, count)
      if count > 1:  # a process holds only the blocks it reads: in one epoch, half of them
        assert n // 2 - k <= len(resident.train_blocks(tiny_source, 5, k, 0, n // 4, index, count)) <= n // 2 + k
      held = resident.load(tiny_source, "train", blocks, max_len=max_len)
      store = on_device.place(held, mesh)
      order = pipeline.BlockOrder(len(tiny_source.blocks("train")), 5, k, index, count)
      host = pipeline.train_iterator(
        tiny_source,
        batch_per_process=k * block,
        seed=5,
        max_len=max_len,
        start=start,
        process_index=index,
        process_count=count,
      )
      for batch in range(start, start + 200, 37):  # across epochs, each reshuffled
        while host.batches < batch:
          next(host)
        rows, _ = resident.train_rows(held, order, 5, batch)
        got = jax.device_get(gather(store, partition.to_global({"r": rows}, mesh)["r"]))
        _same(got, next(host))
      host.close()


@pytest.mark.parametrize("devices", [1, 8])
def test_evaluation_batches_equal_the_host_path(tiny_source, devices):
  mesh = partition.make_mesh(jax.devices()[:devices])
  rows = 296  # cuts across blocks; the last batch holds padding rows
  for count in (1, 2):
    gather = _gather_fn(tiny_source, 10, mesh, valid=True)
    for index in range(count):
      held = resident.load(tiny_source, "test", resident.eval_blocks(tiny_source, "test", index, count), max_len=10)
      store = on_device.place(held, mesh)
      num, host = pipeline.eval_batches(
        tiny_source, "test", rows_per_process=rows, max_len=10, process_index=index, process_count=count
      )
      assert num == pipeline.eval_batch_count(tiny_source, "test", rows, count)
      for b, expected in enumerate(host):
        local = np.arange(b * rows, (b + 1) * rows, dtype=np.int32)
        placed = partition.to_global({"r": local, "v": local < held.rows}, mesh)
        _same(jax.device_get(gather(store, placed["r"], placed["v"])), expected)
      assert b == num - 1


def test_values_read_as_zero_are_counted_per_batch_as_the_host_path_counts_them(tmp_path, tiny_source):
  src = _source(plant(tiny_source.directory, tmp_path / "data", "train", 0, _dirty).parent)
  block = src.block_size()
  held = resident.load(src, "train", range(len(src.blocks("train"))), max_len=10)
  assert held.counts().as_dict() == {"ids outside their vocabulary": 1, "non-finite numeric values": 1}
  order = pipeline.BlockOrder(len(src.blocks("train")), 0, 1)
  rows = resident.RowIterator(held, order, 0, 0, 1, lambda r: r, ahead=2)
  host = pipeline.train_iterator(src, batch_per_process=block, seed=0, max_len=10)
  for _ in range(len(src.blocks("train"))):
    rows.take(1)
    next(host)
    assert rows.counts == host.counts and rows.get_state() == host.get_state()
  rows.close()
  host.close()
  with pytest.raises(
    DataError,
    match=rf"{src.paths('train')[0]} record 0: feature item_id holds id 200 outside its "
    r"vocabulary 0..41; .*set data.oov=map",
  ):
    resident.load(src, "train", [3, 0], max_len=10, oov="error")
  # A bad id only in the part of a history that max_len cuts off is neither counted nor an error, as on the host.
  deep = plant(tiny_source.directory, tmp_path / "deep", "train", 0, lambda b: _oldest_behaviour(b, 200))
  held = resident.load(_source(deep.parent), "train", [0], max_len=1, oov="error")
  assert held.counts().as_dict() == {}


def _oldest_behaviour(block, value):
  row = int(np.argmax(block["hist_len"]))
  assert block["hist_len"][row] > 1
  block["hist_item_id"][row, 0] = value


def _run(config, src, devices=1):
  return Run.build(config, src=src, mesh=partition.make_mesh(jax.devices()[:devices]))


@pytest.mark.parametrize("placement", ["host", "device"])
def test_steps_in_one_call_equal_one_step_per_call(tiny_source, placement):
  config = experiments.get_config("commercial:tiny")  # DIN: a dense network, tables and Dice's running moments,
  config.model.name, config.data.placement = "din", placement  # at less compile time than MIAN
  run = _run(config, tiny_source)  # one Run: its jitted call compiles the 3-step and the 1-step program once
  assert run.placement == placement
  results = []
  for calls in ((3, 3, 1, 3), (1,) * 10):  # with a shortened call, as before a log step; one step per call
    state, it = run.init_state(), run.train_iterator(on_devices=True)
    losses = []
    for steps in calls:
      state, metrics = run.train_call(state, it.take(steps))
      losses += jax.device_get(metrics)["loss"].tolist()
    assert it.get_state()["batches"] == len(losses) == 10
    it.close()
    results.append((losses, jax.device_get(state.params)))
  (losses, params), (singles, single_params) = results
  assert losses == singles  # to the bit
  jax.tree.map(np.testing.assert_array_equal, params, single_params)


def test_auto_chooses_by_size_and_device_refuses_what_does_not_fit(tiny_source, monkeypatch):
  config = experiments.get_config("commercial:tiny")
  mesh = partition.make_mesh(jax.devices()[:1])
  placement, line = choose_placement(config, tiny_source, mesh)
  assert placement == "device" and line.startswith("data.placement=auto: device (the splits take ")
  need = sum(resident.estimate_bytes(tiny_source, s) for s in ("train", "valid", "test"))
  monkeypatch.setattr(on_device, "free_bytes", lambda mesh: (int(need * 1.5), 1))  # the splits fit, but not in half
  placement, line = choose_placement(config, tiny_source, mesh)
  assert placement == "host" and "device when at most 50%" in line
  config.data.placement = "device"
  assert choose_placement(config, tiny_source, mesh)[0] == "device"
  monkeypatch.setattr(on_device, "free_bytes", lambda mesh: (need // 2, 1))
  with pytest.raises(
    DataError,
    match=r"data.placement=device: the splits need [\d.]+ MiB, 200\.\d% of .* free, more "
    r"than the devices have; set data.placement=host",
  ):
    choose_placement(config, tiny_source, mesh)
  config.data.placement = "host"
  assert choose_placement(config, tiny_source, mesh) == ("host", None)
