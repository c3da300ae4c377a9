"""benchmarks/accelerator.sh (it runs on a GPU / TPU machine; here: its syntax and, as a dry run, the
phases and commands it would run, written to summary.json)."""

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "accelerator.sh"


def test_the_script_parses_and_a_dry_run_lists_every_phase(tmp_path):
  subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
  out = subprocess.run([str(SCRIPT), "--dry-run", "--out", str(tmp_path)], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
  assert out.returncode == 0, out.stderr
  phases = {p["phase"]: p["command"] for p in json.loads((tmp_path / "summary.json").read_text())["phases"]}
  assert list(phases) == ["install", "devices", "step_b8192", "step_b65536", "pipeline", "full_scale_run"]
  version = next(line.split("==")[1] for line in (ROOT / "requirements.txt").read_text().splitlines()
                 if line.startswith("jax=="))
  assert "==" + version in phases["install"] and "-r requirements.txt" in phases["install"]
  for batch in (8192, 65536):
    assert "benchmarks.step_throughput --models mian,din,dien,deepfm" in phases[f"step_b{batch}"]
    assert f"--batch {batch}" in phases[f"step_b{batch}"]
  assert "--set data.scale=1.0 --set train.steps=2000" in phases["full_scale_run"]
  assert not (tmp_path / "devices.json").exists()  # nothing ran
