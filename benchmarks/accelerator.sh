#!/usr/bin/env bash
# The accelerator benchmarks in one go, on a machine with an NVIDIA GPU or a Cloud TPU (target: under
# 8 minutes), from a checkout of this repository:
#
#   benchmarks/accelerator.sh [--out DIR] [--no-install] [--dry-run | --cpu-smoke]
#
# 1. install: the pinned requirements with the JAX of the same version for the accelerator found
#    (pip install -r requirements.txt "jax[cuda12]==V" or "jax[tpu]==V"; needs the package index;
#    --no-install when that JAX is installed already);
# 2. devices: what JAX sees (devices.json); stops unless the backend is gpu or tpu;
# 3. the train step of mian, din, dien, deepfm at batch 8192 and 65536 (benchmarks/step_throughput.py);
# 4. the input pipeline at batch 8192 (benchmarks/pipeline.py, 1% data scale);
# 5. a timed 2,000-step MIAN run on the full-scale commercial data (launch.py; the data set is generated
#    first, in parallel on every core, and cached under data_cache/), its result.json and wall time.
# Every result is a JSON file under DIR (default benchmarks/results/accelerator-<time>): devices.json,
# step_b8192/ and step_b65536/ (step_throughput_float32.json), pipeline/pipeline.json, full_scale_run.json
# (the run's result.json: test metrics, samples/s, wall time); each phase's output is in DIR/PHASE.log,
# and summary.json lists each phase's command, exit status and seconds. Each phase has a time limit, so
# a slow phase cannot take the others' time. --dry-run prints the commands only; --cpu-smoke runs every phase on CPU at tiny
# sizes (a check of the script itself: seconds to minutes, numbers meaningless).
set -uo pipefail
cd "$(dirname "$0")/.."

out="benchmarks/results/accelerator-$(date +%Y%m%d-%H%M%S)"
install=1
mode=accelerator
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --no-install) install=0; shift ;;
    --dry-run) mode=dry; shift ;;
    --cpu-smoke) mode=smoke; install=0; shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
python="${PYTHON:-python3}"
jax_version="$(sed -n 's/^jax==//p' requirements.txt)"

if [ "$mode" = smoke ]; then
  export JAX_PLATFORMS=cpu
  batches=(256); models=mian,deepfm; repeats=2
  pipeline_args=(--scale 0.001 --batch 256 --batches 5)
  run_args=(--experiment commercial:tiny --set train.steps=20)
  limits=(60 300 300 600)
else
  batches=(8192 65536); models=mian,din,dien,deepfm; repeats=20
  pipeline_args=(--scale 0.01 --batch 8192 --batches 50)
  run_args=(--experiment commercial --set data.scale=1.0 --set train.steps=2000)
  limits=(60 240 180 420)  # seconds: devices, steps (each batch), pipeline, full-scale run
fi

mkdir -p "$out"
summary="$out/summary.tsv"
: > "$summary"

# phase NAME LIMIT_S COMMAND...: runs COMMAND (output to NAME.log) under a time limit; records its status.
phase() {
  local name="$1" limit="$2"; shift 2
  local command="$*"
  command="${command//$'\n'/ }"
  echo "== $name: $command"
  if [ "$mode" = dry ]; then
    printf '%s\t%s\t%s\t%s\n' "$name" "-" "0" "$command" >> "$summary"
    return 0
  fi
  local t0=$SECONDS status=0
  timeout "$limit" "$@" > "$out/$name.log" 2>&1 || status=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t0))" "$command" >> "$summary"
  tail -n 12 "$out/$name.log"
  return "$status"
}

# keep FILE COPY: a phase's result file into the output folder (not in a dry run).
keep() {
  [ "$mode" = dry ] || cp "$1" "$2"
}

if [ "$install" = 1 ] && [ "$mode" != smoke ]; then
  if [ "$mode" = dry ]; then
    extra="jax[cuda12 or tpu]==$jax_version"
  elif command -v nvidia-smi > /dev/null && nvidia-smi -L > /dev/null 2>&1; then
    extra="jax[cuda12]==$jax_version"
  elif [ -e /dev/accel0 ] || [ -e /dev/vfio/0 ] || [ -n "${TPU_NAME:-}${TPU_ACCELERATOR_TYPE:-}" ]; then
    extra="jax[tpu]==$jax_version"
  else
    echo "error: no NVIDIA GPU (nvidia-smi) or TPU (/dev/accel0, /dev/vfio) found; --cpu-smoke checks the script on CPU" >&2
    exit 2
  fi
  phase install 600 "$python" -m pip install -q -r requirements.txt "$extra" || exit 1
fi

expect='("gpu", "tpu")'
[ "$mode" = smoke ] && expect='("cpu",)'
phase devices "${limits[0]}" "$python" -c "
import json, jax
d = jax.devices()
info = {'backend': jax.default_backend(), 'jax': jax.__version__, 'devices': [str(x) for x in d],
        'kind': d[0].device_kind, 'count': len(d)}
print(json.dumps(info))
open('$out/devices.json', 'w').write(json.dumps(info, indent=1))
assert info['backend'] in $expect, f\"backend {info['backend']}: JAX does not see the accelerator\"
" || { [ "$mode" = dry ] || exit 1; }

for b in "${batches[@]}"; do  # each benchmark's JSON into a folder of its own (not benchmarks/results)
  phase "step_b$b" "${limits[1]}" env MIAN_JAX_BENCH_RESULTS="$out/step_b$b" \
    "$python" -m benchmarks.step_throughput --models "$models" --batch "$b" --repeats "$repeats"
done

phase pipeline "${limits[2]}" env MIAN_JAX_BENCH_RESULTS="$out/pipeline" "$python" -m benchmarks.pipeline "${pipeline_args[@]}"

workdir="$out/commercial_run"
phase full_scale_run "${limits[3]}" "$python" launch.py "${run_args[@]}" --workdir "$workdir" --fresh \
  && keep "$workdir/result.json" "$out/full_scale_run.json"

"$python" - "$summary" "$out/summary.json" <<'EOF'
import json, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
phases = [{"phase": n, "exit": s, "seconds": int(t), "command": c} for n, s, t, c in rows]
json.dump({"phases": phases, "total_seconds": sum(p["seconds"] for p in phases)}, open(sys.argv[2], "w"), indent=1)
print(f"wrote {sys.argv[2]}: " + ", ".join(f"{p['phase']} {p['seconds']} s (exit {p['exit']})" for p in phases))
EOF
