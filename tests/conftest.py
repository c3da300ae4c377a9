"""Test setup: 8 fake CPU devices (set before jax is imported) and a shared tiny commercial data set."""

import os
import tempfile
from pathlib import Path

# Tests compile with the XLA CPU backend's optimisation off: about a third less compile time, which is
# most of the suite's time. Numerics are checked against references with tolerances, and every bit-for-bit
# comparison (resume, resharding, multi-host) runs both sides under these same flags: the launch.py
# processes the tests start get them too (helpers.xla_flags).
os.environ["MIAN_JAX_TEST_XLA_FLAGS"] = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ["XLA_FLAGS"] = " ".join(
  [os.environ.get("XLA_FLAGS", ""), os.environ["MIAN_JAX_TEST_XLA_FLAGS"], "--xla_force_host_platform_device_count=8"]
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache for the test run, shared by the xdist workers (same run id) and the
# launch.py subprocesses the tests start: the same tiny programs are compiled once, not once per process.
_run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getpid())
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(tempfile.gettempdir()) / f"mian_jax_xla_cache_{_run_id}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

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


# ------------------------------------------------------------------ the `slow` mark
# Tests measured at 4 s or more on 2 cores (the inner loop is `python -m pytest -m "not slow"`), and every
# test that uses a fixture which trains through launch.py. CI runs everything.
SLOW_FIXTURES = {"finished", "uninterrupted", "trained", "run", "reference"}
SLOW = {
  "test_amazon.py": {
    "test_bars_layout_equals_dien_layout_and_parallel_parts_equal_one_part",
    "test_books_experiment_trains_on_raw_dumps_through_launch",
    "test_converted_data_trains",
    "test_yelp_experiment_trains_and_plots_gim_without_context_fields",
  },
  "test_bad_input.py": {
    "test_a_full_disk_while_writing_shards_or_a_checkpoint_keeps_what_was_written",
    "test_ids_outside_the_vocabulary_and_non_finite_values_follow_data_oov",
    "test_missing_or_empty_input_folders",
    "test_training_batches_count_values_read_as_zero",
    "test_truncated_and_corrupt_shards_are_named",
  },
  "test_batch_independence.py": "*",
  "test_cli.py": {"test_user_mistakes_are_one_error_line"},
  "test_commercial_data.py": {
    "test_deterministic_and_cached",
    "test_statistics_mirror_the_paper_and_each_interaction_matters",
  },
  "test_custom.py": {"test_parquet_gives_the_same_data_as_csv", "test_real_alimama_rows_train_through_launch"},
  "test_e2e.py": "*",
  "test_embedding_lookup.py": {"test_the_train_step_is_the_same_whichever_the_lookup"},
  "test_resident.py": {"test_steps_in_one_call_equal_one_step_per_call"},
  "test_faults.py": "*",
  "test_faults_data.py": {"test_a_test_split_with_one_class_prints_auc_as_undefined"},
  "test_faults_gauc.py": {"test_predict_writes_the_raw_user_of_every_row"},
  "test_faults_signals.py": "*",
  "test_first_hour.py": {"test_eval_without_checkpoints_is_one_line_and_creates_nothing"},
  "test_layer_rewrites.py": {
    "test_encoder_equals_flax_attention_and_layer_norms",
    "test_masked_rnn_equals_the_scan_of_cells",
    "test_activation_unit_regrouped_first_layer_equals_the_concatenation",
    "test_auxiliary_pair_loss_equals_the_concatenation",
  },
  "test_layers.py": {"test_embedding_groups_share_tables_and_mask_padding", "test_mian_shapes_and_attention"},
  "test_mian_equations.py": {
    "test_each_ablation_mlp_input_is_mians_minus_the_module",
    "test_ibim_pools_candidate_and_encoded_behaviours",
  },
  "test_model_edge_cases.py": "*",
  "test_movielens.py": {"test_tiny_training_run"},
  "test_multihost.py": "*",
  "test_precision.py": "*",
  "test_resharding.py": "*",
  "test_sharding.py": "*",
  "test_sparse_tables.py": {
    "test_duplicate_ids_in_a_batch_sum",
    "test_sparse_sgd_equals_dense_sgd",
    "test_unique_rows_give_the_same_embeddings",
  },
  "test_sweep.py": {
    "test_a_failing_trial_does_not_stop_the_others",
    "test_gim_figure_from_the_best_checkpoint",
    "test_sweep_runs_in_parallel_resumes_when_interrupted_and_skips_finished",
  },
  "test_validation.py": {
    "test_best_checkpoint_is_chosen_on_validation_and_reports_its_test_metrics",
    "test_custom_data_holds_out_a_share_of_users_or_reads_valid_files",
    "test_early_stopping_and_no_selection",
  },
  "test_zoo_din_dien.py": {"test_models_train_and_eval"},
  "test_zoo_fm_cin_cross.py": {"test_model_builds_and_gives_finite_logits", "test_models_read_every_group"},
  "test_zoo_train.py": "*",
}


def pytest_collection_modifyitems(config, items):
  for item in items:
    listed = SLOW.get(item.path.name, ())
    if listed == "*" or item.originalname in listed or SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
      item.add_marker(pytest.mark.slow)
