"""benchmarks/accelerator.sh (it runs on a GPU / TPU machine; here: its syntax and, as a dry run, the
phases, limits and commands it would run, written to summary.json) and the table it ends with
(benchmarks/accelerator_table.py, on result files written here)."""

import json
import re
import subprocess
from pathlib import Path

from benchmarks import accelerator_table

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "accelerator.sh"
PHASES = ["devices", "step", "step_bf16", "scatter", "profile", "pipeline", "end_to_end"]


def dry_run(out: Path, *flags: str) -> dict[str, dict]:
  done = subprocess.run(
    [str(SCRIPT), "--dry-run", "--out", str(out), *flags], capture_output=True, text=True, cwd=ROOT, timeout=60
  )
  assert done.returncode == 0, done.stderr
  assert not (out / "devices.json").exists() and not (out / "table.md").exists()  # nothing ran
  return {p["phase"]: p for p in json.loads((out / "summary.json").read_text())["phases"]}


def test_the_script_parses_and_a_dry_run_lists_the_phases_in_order_without_installing(tmp_path):
  subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
  phases = dry_run(tmp_path)
  assert list(phases) == PHASES
  commands = {name: p["command"] for name, p in phases.items()}
  step = commands["step"]
  assert "benchmarks.step_throughput --models mian,mian_paper,din,dien,deepfm --batch 8192 --repeats 20" in step
  assert f"MIAN_JAX_BENCH_RESULTS={tmp_path}/step " in step
  bf16 = commands["step_bf16"]
  assert (
    "benchmarks.step_throughput --models mian,mian_paper,mian_paper:cudnn,dien" in bf16 and "--dtype bfloat16" in bf16
  )
  assert "--batch 8192" in bf16
  scatter = commands["scatter"].split(";")  # with the native atomic, then without
  assert len(scatter) == 2 and all("benchmarks.embedding_lookup --batch 8192" in c for c in scatter)
  assert "NATIVE_ATOMICS" not in scatter[0] and "MIAN_JAX_NATIVE_ATOMICS=0" in scatter[1]
  assert f"{tmp_path}/scatter'" in scatter[0] and f"{tmp_path}/scatter_cas'" in scatter[1]
  for b in (8192, 65536):
    assert f"{tmp_path}/profile_{b}' " in commands["profile"]
    assert f"benchmarks.profile mian --batch {b} --steps 5" in commands["profile"]
  assert (
    "benchmarks.pipeline --scale 0.1 --batch 8192 --threads 1,2,4,8,16 --models mian,din,deepfm" in commands["pipeline"]
  )
  run = commands["end_to_end"]
  assert "launch.py --experiment commercial --set data.scale=1.0 --set train.steps=1500" in run
  assert f"--workdir {tmp_path}/commercial_run --fresh" in run and "batch_size" not in run
  assert not any("pip install" in c for c in commands.values())


def test_the_limits_fit_in_eight_minutes(tmp_path):
  phases = dry_run(tmp_path, "--wheels", str(tmp_path / "whl"))
  assert list(phases) == ["wheels"] + PHASES
  assert sum(p["limit_s"] for p in phases.values()) <= 480
  # the one array in the script says the same
  text = SCRIPT.read_text()
  limits = dict(re.findall(r"\[(\w+)\]=(\d+)", re.search(r"declare -A LIMITS=\((.*)\)", text).group(1)))
  assert set(limits) == set(phases) and sum(map(int, limits.values())) <= 480
  assert "--no-index --no-deps --target" in phases["wheels"]["command"]
  assert f"{tmp_path}/whl/*.whl" in phases["wheels"]["command"]


def test_install_only_when_asked(tmp_path):
  phases = dry_run(tmp_path, "--install")
  assert list(phases) == ["install"] + PHASES
  version = next(
    line.split("==")[1] for line in (ROOT / "requirements.txt").read_text().splitlines() if line.startswith("jax==")
  )
  assert "==" + version in phases["install"]["command"] and "-r requirements.txt" in phases["install"]["command"]
  assert list(dry_run(tmp_path / "b", "--no-install")) == PHASES  # the old flag: accepted, the default


def test_the_cpu_smoke_commands_are_tiny(tmp_path):
  text = SCRIPT.read_text()
  assert "--scale 0.001 --batch 256 --batches 5 --threads 1,2 --models mian" in text
  assert "--experiment commercial:tiny --set train.steps=20" in text


def write(path: Path, doc) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)


def test_the_table_holds_the_numbers_and_names_what_is_missing(tmp_path, capsys):
  out = tmp_path
  write(
    out / "summary.json",
    {
      "phases": [
        {"phase": "devices", "exit": 0, "seconds": 3, "command": "python3 -c ..."},
        {
          "phase": "step",
          "exit": 0,
          "seconds": 50,
          "command": "env MIAN_JAX_BENCH_RESULTS=x python3 -m benchmarks.step_throughput --models mian,din --batch 8192",
        },
        {
          "phase": "step_bf16",
          "exit": 124,
          "seconds": 60,
          "command": "env MIAN_JAX_BENCH_RESULTS=x python3 -m benchmarks.step_throughput --models mian,dien",
        },
        {
          "phase": "pipeline",
          "exit": 0,
          "seconds": 90,
          "command": "env X=y python3 -m benchmarks.pipeline --threads 1,4 --models mian,din",
        },
        {"phase": "end_to_end", "exit": 0, "seconds": 120, "command": "python3 launch.py"},
      ]
    },
  )
  write(out / "devices.json", {"backend": "gpu", "jax": "0.11.2", "kind": "NVIDIA H200", "count": 1})
  write(
    out / "step" / "step_throughput_float32.json",
    {
      "batch": 8192,
      "rows": [{"model": "mian", "samples_per_s": 1234567.0}, {"model": "din", "samples_per_s": 2345678.0}],
    },
  )
  # step_bf16 wrote nothing (timed out); the scatter phase's second run did not write; the profile's first did
  write(
    out / "scatter" / "embedding_lookup.json",
    {
      "rows": [
        {"what": "all fields: batched", "ms": 1.25},
        {"what": "one table of 41 rows", "ms": 2.5, "one_hot_ms": 0.5},
      ]
    },
  )
  write(
    out / "profile_8192" / "profile_mian.json",
    {
      "batch": 8192,
      "op_ms_per_step": 6.6,
      "rows": [
        {"op": "fusion.1", "share": 0.038, "from": "mlp/dense0"},
        {"op": "cutlass", "share": 0.025, "from": "?"},
      ],
    },
  )
  (out / "profile_65536").mkdir()
  write(
    out / "pipeline" / "pipeline.json",
    {
      "rows": [
        {"what": "train input, 1 threads", "kind": "train_input", "threads": 1, "samples_per_s": 111111.0},
        {
          "what": "train input, 4 threads",
          "kind": "train_input",
          "threads": 4,
          "samples_per_s": 388888.0,
          "vs_one": 3.5,
        },
        {"what": "eval input, 4 threads", "kind": "eval_input", "threads": 4, "rows_per_s": 777777.0},
        {"what": "mian step alone", "kind": "step", "model": "mian", "samples_per_s": 900000.0},
        {"what": "mian input + step", "kind": "end_to_end", "model": "mian", "samples_per_s": 300000.0},
        {"what": "no kind field at all", "samples_per_s": 5.0},
      ]
    },
  )
  write(out / "end_to_end.json", {"samples_per_s": 222222.0, "wall_s": 98.76, "auc": 0.76543})
  write(
    out / "commercial_run" / "metrics.jsonl",
    '{"step": 100, "split": "train"}\n{"step": 500, "split": "valid"}\n{"step": 500, "split": "test"}\n'
    '{"step": 900, "split": "train"}\n{"step": 900, "split": "valid"}\n{"step": 950, "split": "test"}\n{"step"',
  )
  write(out / "step.gpu.csv", "0, 80, 1000\n0, 90, 2000\n0, 100, 3000\n0, [N/A], 3000\n")
  write(out / "pipeline.gpu.csv", "40, 500\n60, 700\n")

  assert accelerator_table.main([str(out)]) == 0
  text = (out / "table.md").read_text()
  assert capsys.readouterr().out == text
  assert text.count("\n|---|") == 1  # one table
  for expected in (
    "NVIDIA H200",
    "1,234,567 samples/s",
    "2,345,678 samples/s",
    "111,111 samples/s",
    "388,888 samples/s",
    "3.50x",
    "777,777 rows/s",
    "300,000 samples/s (0.33x of the step alone)",
    "222,222 samples/s",
    "98.8 s",
    "0.7654",
    "90% / 100% (max memory 3,000 MiB, 3 samples)",
    "50% / 60%",
    "all fields: batched, native f32 atomic | 1.250 ms",
    "one table of 41 rows, native f32 atomic | 2.500 ms, one-hot 0.500 ms",
    "| profile | mian, batch 8192 | 6.60 ms of kernels per step; top: fusion.1 3.8% (mlp/dense0); cutlass 2.5% (?) |",
  ):
    assert expected in text, expected
  line = lambda what: next(row for row in text.splitlines() if what in row)  # noqa: E731
  assert "missing (phase failed: timed out after 60 s)" in line("mian step alone, bfloat16")
  assert "missing (phase failed: timed out" in line("dien step alone, bfloat16")
  assert "missing (phase failed)" in line("din input + step")
  assert "missing (phase failed)" in line("embedding lookup, CAS-loop atomic")
  assert "missing (phase failed)" in line("mian, batch 65536")
  assert line("evaluations").endswith("| 3 |")
  assert line("step_bf16 | GPU").endswith("| n/a |") and line("end_to_end | GPU").endswith("| n/a |")


def test_the_table_of_an_empty_folder_says_every_phase_failed(tmp_path):
  assert accelerator_table.main([str(tmp_path)]) == 0
  rows = (tmp_path / "table.md").read_text().splitlines()[2:]
  values = [row.rsplit("|", 2)[1].strip() for row in rows]
  assert values and all(v in ("missing (phase failed)", "n/a") for v in values)
  assert sum("step alone" in row for row in rows) == 9  # the accelerator run's models: 5 float32, 4 bfloat16
  assert accelerator_table.main([str(tmp_path / "absent")]) == 2
