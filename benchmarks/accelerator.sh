#!/usr/bin/env bash
# The accelerator check in one call (under 8 minutes), on a machine with an NVIDIA GPU or a Cloud TPU whose
# JAX is installed already, from a checkout of this repository:
#
#   benchmarks/accelerator.sh [--out DIR] [--install] [--wheels DIR] [--dry-run | --cpu-smoke]
#
# Phases, each under its own time limit (the LIMITS array below; they add up to at most 480 s):
#   devices     what JAX sees (devices.json); stops unless the backend is gpu or tpu;
#   step        the train step alone of mian, mian_paper, din, dien, deepfm at batch 8192
#               (benchmarks/step_throughput.py);
#   step_bf16   the same for mian, mian_paper (its attention by XLA, then by cuDNN: mian_paper:cudnn) and dien
#               in bfloat16;
#   scatter     the embedding lookup alone, per field against batched, gather against one-hot by table size
#               (benchmarks/embedding_lookup.py, batch 8192), with the native f32 scatter-add atomic that
#               mian_jax/xla_env.py asks for (into scatter/), then without it (MIAN_JAX_NATIVE_ATOMICS=0,
#               into scatter_cas/);
#   profile     where MIAN's train step spends its time at batch 8192, then at 65536 (benchmarks/profile.py:
#               the top kernels and the time per module; into profile_8192/ and profile_65536/);
#   pipeline    the input path alone (train input at 1-16 threads, eval input) and input + step for mian,
#               din, deepfm with data.placement host and device at 16 steps per call, and evaluation
#               (benchmarks/pipeline.py, 10% data scale, batch 8192);
#   end_to_end  a timed 1,500-step MIAN run on the full-scale commercial data through launch.py (the data
#               set is generated first and cached under data_cache/): its result.json (samples/s, wall time,
#               test AUC) is copied to end_to_end.json;
# then benchmarks/accelerator_table.py prints one markdown table of it all and writes DIR/table.md.
# While step .. end_to_end run, nvidia-smi (when present) samples GPU utilisation and memory once a second
# into DIR/PHASE.gpu.csv. Each phase's JSON lands in DIR/PHASE/, its output in DIR/PHASE.log; summary.json
# lists each phase's command, limit, exit status and seconds. A failed phase does not stop the later ones.
#
# Nothing is installed by default. --install first runs pip install -r requirements.txt "jax[cuda12]==V"
# (or "jax[tpu]==V"; V from requirements.txt; needs the package index; not counted in the 8 minutes).
# On a GPU machine whose JAX is installed but which has no package index, bring grain, array_record and
# portpicker as wheels. On a machine with the index (versions as requirements.txt pins them; --python-version
# that of the GPU machine's python3):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     grain==0.2.18 array_record==0.8.6 portpicker
# copy .whl/ along with the checkout, then on the GPU machine either
#   python3 -m pip install -q --no-index --no-deps --target .site .whl/*.whl && export PYTHONPATH=$PWD/.site
# or let this script do that step: --wheels .whl (into a temporary folder put first on PYTHONPATH).
#
# --dry-run prints the commands and writes summary.json (nothing runs); --cpu-smoke runs every phase on CPU
# at tiny sizes (a check of the script itself: a few minutes, numbers meaningless); --out DIR (default
# benchmarks/results/accelerator-<time>). --no-install is accepted and does nothing (the default).
set -uo pipefail
cd "$(dirname "$0")/.."

# Seconds per phase on the accelerator: the sum (480) is the 8-minute budget, so a slow phase cannot eat
# the time of the ones after it. --install's pip run is outside it.
declare -A LIMITS=([wheels]=15 [devices]=20 [step]=95 [step_bf16]=85 [scatter]=45 [profile]=45 [pipeline]=85 [end_to_end]=90)
# On CPU (--cpu-smoke) compilation dominates: wider limits, as nothing there is timed against a budget.
declare -A SMOKE_LIMITS=([wheels]=60 [devices]=60 [step]=300 [step_bf16]=300 [scatter]=200 [profile]=300 [pipeline]=300 [end_to_end]=300)
INSTALL_LIMIT=600

out="benchmarks/results/accelerator-$(date +%Y%m%d-%H%M%S)"
install=0
wheels=""
mode=accelerator
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --install) install=1; shift ;;
    --no-install) install=0; shift ;;
    --wheels) wheels="$2"; shift 2 ;;
    --dry-run) mode=dry; shift ;;
    --cpu-smoke) mode=smoke; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
python="${PYTHON:-python3}"
jax_version="$(sed -n 's/^jax==//p' requirements.txt)"

if [ "$mode" = smoke ]; then
  export JAX_PLATFORMS=cpu
  install=0  # the CPU JAX of requirements.txt is what the smoke run checks the script with
  for k in "${!SMOKE_LIMITS[@]}"; do LIMITS[$k]=${SMOKE_LIMITS[$k]}; done
  step_args=(--models mian,deepfm --batch 256 --repeats 2)
  bf16_args=(--models mian --batch 256 --repeats 2 --dtype bfloat16)
  scatter_args="--batch 256 --repeats 2"
  profile_batches="256 512"
  pipeline_args=(--scale 0.001 --batch 256 --batches 5 --threads 1,2 --models mian --per-call 1,4 --steps 8)
  run_args=(--experiment commercial:tiny --set train.steps=20)
else
  step_args=(--models mian,mian_paper,din,dien,deepfm --batch 8192 --repeats 20)
  bf16_args=(--models mian,mian_paper,mian_paper:cudnn,dien --batch 8192 --repeats 20 --dtype bfloat16)
  scatter_args="--batch 8192 --repeats 20"
  profile_batches="8192 65536"
  pipeline_args=(--scale 0.1 --batch 8192 --threads 1,2,4,8,16 --models mian,din,deepfm --per-call 16 --steps 200)
  run_args=(--experiment commercial --set data.scale=1.0 --set train.steps=1500)
fi

if [ -n "$wheels" ] && [ "$mode" != dry ] && ! compgen -G "$wheels/*.whl" > /dev/null; then
  echo "error: --wheels $wheels: no .whl files there" >&2
  exit 2
fi

mkdir -p "$out"
summary="$out/summary.tsv"
: > "$summary"

# GPU sampling: on when nvidia-smi answers (never in a dry run).
smi=0
if [ "$mode" != dry ] && command -v nvidia-smi > /dev/null && nvidia-smi -L > /dev/null 2>&1; then
  smi=1
fi
sampler=""
site=""
cleanup() {
  [ -z "$sampler" ] || kill "$sampler" 2> /dev/null
  [ -z "$site" ] || rm -rf "$site"
}
trap cleanup EXIT

# phase NAME LIMIT_S SAMPLE COMMAND...: runs COMMAND (output to NAME.log) under a time limit, with GPU
# sampling into NAME.gpu.csv when SAMPLE is 1; records its status in the summary.
phase() {
  local name="$1" limit="$2" sample="$3"; shift 3
  local command="$*"
  command="${command//$'\n'/ }"
  echo "== $name (limit ${limit} s): $command"
  if [ "$mode" = dry ]; then
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "-" "0" "$limit" "$command" >> "$summary"
    return 0
  fi
  if [ "$smi" = 1 ] && [ "$sample" = 1 ]; then
    # index first: on a machine with several GPUs the table reports the busiest one
    nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader,nounits -l 1 \
      > "$out/$name.gpu.csv" 2> /dev/null &
    sampler=$!
  fi
  local t0=$SECONDS status=0
  # -k: a process still cleaning up 10 s after SIGTERM is killed, so the limit holds
  timeout -k 10 "$limit" "$@" > "$out/$name.log" 2>&1 || status=$?
  if [ -n "$sampler" ]; then
    kill "$sampler" 2> /dev/null
    wait "$sampler" 2> /dev/null
    sampler=""
  fi
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t0))" "$limit" "$command" >> "$summary"
  tail -n 12 "$out/$name.log"
  return "$status"
}

if [ "$install" = 1 ]; then
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
  phase install "$INSTALL_LIMIT" 0 "$python" -m pip install -q -r requirements.txt "$extra" || exit 1
fi

if [ -n "$wheels" ]; then
  if [ "$mode" = dry ]; then
    site="${TMPDIR:-/tmp}/mian_jax_site.XXXXXX"
  else
    site="$(mktemp -d "${TMPDIR:-/tmp}/mian_jax_site.XXXXXX")"
  fi
  phase wheels "${LIMITS[wheels]}" 0 "$python" -m pip install -q --no-index --no-deps --target "$site" "$wheels"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  [ "$mode" = dry ] && site=""
fi

expect='("gpu", "tpu")'
[ "$mode" = smoke ] && expect='("cpu",)'
phase devices "${LIMITS[devices]}" 0 "$python" -c "
import json, sys, jax
d = jax.devices()
info = {'backend': jax.default_backend(), 'jax': jax.__version__, 'devices': [str(x) for x in d],
        'kind': d[0].device_kind, 'count': len(d)}
print(json.dumps(info))
open(sys.argv[1], 'w').write(json.dumps(info, indent=1))
assert info['backend'] in $expect, f\"backend {info['backend']}: JAX does not see the accelerator\"
" "$out/devices.json" || { [ "$mode" = accelerator ] && exit 1; }

# Each benchmark's JSON into a folder of its own (not benchmarks/results).
phase step "${LIMITS[step]}" 1 env MIAN_JAX_BENCH_RESULTS="$out/step" \
  "$python" -m benchmarks.step_throughput "${step_args[@]}"
phase step_bf16 "${LIMITS[step_bf16]}" 1 env MIAN_JAX_BENCH_RESULTS="$out/step_bf16" \
  "$python" -m benchmarks.step_throughput "${bf16_args[@]}"
# Two runs in one phase each (XLA reads XLA_FLAGS once per process): the lookup with and without the native
# atomic; the profile at both batch sizes.
phase scatter "${LIMITS[scatter]}" 1 bash -c "MIAN_JAX_BENCH_RESULTS='$out/scatter' '$python' -m \
benchmarks.embedding_lookup $scatter_args; MIAN_JAX_BENCH_RESULTS='$out/scatter_cas' MIAN_JAX_NATIVE_ATOMICS=0 \
'$python' -m benchmarks.embedding_lookup $scatter_args"
profiles=""
for b in $profile_batches; do
  profiles+="MIAN_JAX_BENCH_RESULTS='$out/profile_$b' '$python' -m benchmarks.profile mian --batch $b --steps 5 --top 25; "
done
phase profile "${LIMITS[profile]}" 1 bash -c "$profiles"
phase pipeline "${LIMITS[pipeline]}" 1 env MIAN_JAX_BENCH_RESULTS="$out/pipeline" \
  "$python" -m benchmarks.pipeline "${pipeline_args[@]}"
workdir="$out/commercial_run"
phase end_to_end "${LIMITS[end_to_end]}" 1 "$python" launch.py "${run_args[@]}" --workdir "$workdir" --fresh \
  && { [ "$mode" = dry ] || cp "$workdir/result.json" "$out/end_to_end.json"; }

"$python" - "$summary" "$out/summary.json" <<'EOF'
import json, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
phases = [{"phase": n, "exit": int(s) if s.lstrip("-").isdigit() else None, "seconds": int(t),
           "limit_s": int(limit), "command": c} for n, s, t, limit, c in rows]
json.dump({"phases": phases, "total_seconds": sum(p["seconds"] for p in phases)}, open(sys.argv[2], "w"), indent=1)
print(f"wrote {sys.argv[2]}: " + ", ".join(f"{p['phase']} {p['seconds']} s (exit {p['exit']})" for p in phases))
EOF

echo "== table: $python -m benchmarks.accelerator_table $out"
[ "$mode" = dry ] || "$python" -m benchmarks.accelerator_table "$out"
