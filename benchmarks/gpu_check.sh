#!/usr/bin/env bash
# The GPU check, one command on an offline CUDA machine (see ../shared/gpu.md):
#   bash benchmarks/build_wheels.sh           # beforehand, where pip works: .whl/ (attnbench, pyperf)
#   bash benchmarks/gpu_check.sh OUT_DIR      # there, with .whl/ carried (git ignores it)
# Steps, in this order, each under `timeout` inside one overall deadline (GPU_CHECK_BUDGET_S,
# 420 s: the limits shrink to what is left, and the summary always keeps its share):
#   env and nvidia-smi; install .whl/; the timing probe (cold, warm and graph timings against
#   triton's do_bench and do_bench_cudagraph on a decode and an 8k prefill call);
#   the memory cross-check (a fresh process's driver view and the models); the memory probes
#   (layouts, the reference at long decode, cache retained between worker processes);
#   pytest -m gpu without flex, then flex alone; a trimmed long_seq + decode `attnbench run`;
#   the summary, last. A failing or timed-out step is reported and the next one runs.
# OUT_DIR gets at most 8 files, none in folders: gpu_check.log (every step's full output),
# crosscheck.json, memory_probe.json, suite.yaml, results.json and index.html.
# Dry mode (GPU_CHECK_DRY=1, or no nvidia-smi, or a torch that sees no CUDA device) runs end to
# end on any machine: each CUDA step is announced and skipped, the suite is validated, not run.
# Exit status: 0 when no step failed or timed out, 1 otherwise.
set -uo pipefail
OUT=${1:?usage: gpu_check.sh OUT_DIR}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PY=${PYTHON:-python3} OUT PYTHONUNBUFFERED=1
BUDGET=${GPU_CHECK_BUDGET_S:-420}
SUMMARY_S=20
SITE=${GPU_CHECK_SITE:-/tmp/site}
DRY=""
[[ ${GPU_CHECK_DRY:-0} != 0 ]] && DRY="GPU_CHECK_DRY=$GPU_CHECK_DRY"
command -v nvidia-smi >/dev/null || DRY=${DRY:-"no nvidia-smi on this machine"}
START=$(date +%s)
N=0
TOTAL=9
FAILED=()
RESULTS=()
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# step NAME MAX_S cuda|any COMMAND...: announce, skip in dry mode or when the budget is spent, else
# run under a timeout that leaves the summary its share of what remains.
step() {
  local name=$1 max=$2 needs=$3 reserve=$SUMMARY_S
  shift 3
  N=$((N + 1))
  [[ $name == summary ]] && reserve=0
  local spent=$(($(date +%s) - START))
  local left=$((BUDGET - spent - reserve))
  local limit=$((max < left ? max : left))
  echo
  echo "== [$N/$TOTAL] $name"
  if [[ $needs == cuda && -n $DRY ]]; then
    echo "-- skipped: needs CUDA, dry run ($DRY)"
    RESULTS+=("$name: skipped (dry run)")
    return 0
  fi
  if ((limit < 5)); then
    echo "-- skipped: ${spent}s of the ${BUDGET}s budget spent"
    RESULTS+=("$name: skipped (budget spent)")
    FAILED+=("$name")
    return 0
  fi
  echo "-- limit ${limit}s (${spent}s of ${BUDGET}s spent)"
  local t0 rc status
  t0=$(date +%s)
  timeout -k 10 "$limit" "$@"
  rc=$?
  if ((rc == 124 || rc == 137)); then
    status="TIMED OUT at ${limit}s"
  elif ((rc == 0)); then
    status="ok"
  else
    status="FAILED (exit $rc)"
  fi
  ((rc == 0)) || FAILED+=("$name")
  echo "-- $name: $status in $(($(date +%s) - t0))s"
  RESULTS+=("$name: $status, $(($(date +%s) - t0))s")
}

env_report() {
  echo "date: $(date -u +%FT%TZ)  host: $(hostname)  $(uname -srm)  cpus: $(nproc)"
  git log -1 --format='commit: %h %s' 2>/dev/null || true
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,clocks.max.sm,temperature.gpu,power.draw,power.limit --format=csv
  else
    echo "nvidia-smi: not found"
  fi
  "$PY" - <<'PY'
import importlib, os, sys
import torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version() if torch.cuda.is_available() else None)
for name in ("triton", "pyperf", "pluggy", "pandas", "attnbench"):
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '?')} ({module.__file__})")
    except ImportError as exc:
        print(f"{name}: missing ({exc})")
print("cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
    open(os.path.join(os.environ["WORK"], "cuda_ok"), "w").close()  # tells the steps after this one
PY
}

install_wheels() {
  ls -la .whl/*.whl || { echo "no .whl/*.whl: run 'bash benchmarks/build_wheels.sh' where pip works, and carry .whl"; return 1; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
}

write_suite() {
  # The trimmed run: long_seq's CUDA shapes at 2k and 8k and decode's at 8k and 32k keys.
  cat >"$OUT/suite.yaml" <<'YAML'
name: gpu_check
description: >
  The GPU check's trimmed run (benchmarks/gpu_check.sh): long_seq on CUDA at 2k and 8k (batch x seq
  = 16k tokens, 16 heads of 128, bf16, with and without a causal mask) and decode at 8k and 32k
  keys (batch 8, 32 query heads over 8, bf16). Flex is left to pytest: it compiles per case.
implementations:
  include: [eager, "sdpa*", chunked]
  exclude: [sdpa.math, reference]
timeout_s: 60
cpu:
  # One tiny case, so the file is a valid suite on a CPU too (the dry run validates it).
  include_cases:
    - {seq: 64, heads_q: 2, head_dim: 16}
cuda:
  defaults:
    head_dim: 128
    dtype: bfloat16
  include_cases:
    - {seq: 2048, tokens: 16384, heads_q: 16, mask: none}
    - {seq: 2048, tokens: 16384, heads_q: 16, mask: causal}
    - {seq: 8192, tokens: 16384, heads_q: 16, mask: none}
    - {seq: 8192, tokens: 16384, heads_q: 16, mask: causal}
    - {seq_q: 1, seq_kv: 8192, batch: 8, heads_q: 32, heads_kv: 8, mask: causal}
    - {seq_q: 1, seq_kv: 32768, batch: 8, heads_q: 32, heads_kv: 8, mask: causal}
YAML
}

suite_run() {
  if [[ -n $DRY ]]; then
    echo "-- dry run ($DRY): validating $OUT/suite.yaml instead of running it on cuda"
    "$PY" -m attnbench validate "$OUT/suite.yaml"
    return
  fi
  "$PY" -m attnbench run "$OUT/suite.yaml" --device cuda --quiet --output "$WORK/run"
  local rc=$?
  cp "$WORK/run/results.json" "$WORK/run/index.html" "$OUT/" 2>/dev/null
  return $rc
}

summary() {
  "$PY" - "$OUT/results.json" <<'PY'
import os, sys
path = sys.argv[1]
if not os.path.exists(path):
    print(f"no {os.path.basename(path)}: the suite run did not run or did not finish")
    raise SystemExit(0)
from attnbench.results import load
df = load(path)
cols = ["impl", "batch", "seq_q", "seq_kv", "mask", "status", "time_ms_median", "tflops", "pct_peak_tflops", "gbps",
        "pct_peak_gbps", "peak_bytes", "rel_err"]
df["reason"] = df["reason"].str.replace("\n", " ").str.slice(0, 70)  # the whole reason is in results.json
print(df[[c for c in cols + ["reason"] if c in df.columns]].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
PY
  if [[ -f $OUT/crosscheck.json ]]; then
    "$PY" benchmarks/gpu_crosscheck.py summary "$OUT/crosscheck.json"
  else
    echo "no crosscheck.json: the timing probe and memory cross-check did not run"
  fi
}

main() {
  echo "gpu_check: OUT=$OUT budget=${BUDGET}s python=$PY${DRY:+ (dry run: $DRY)}"
  step "env and nvidia-smi" 30 any bash -c env_report
  if [[ -z $DRY && ! -f $WORK/cuda_ok ]]; then
    DRY="torch sees no CUDA device"
    echo "-- from here on a dry run: $DRY"
  fi
  step "install .whl" 60 cuda bash -c install_wheels
  # The tree first: the scripts under benchmarks/ and the worker processes must import the same
  # attnbench as pytest does, even if .whl/ was built before the tree last changed; the wheels add
  # pyperf and attnbench's entry points.
  [[ -z $DRY && -d $SITE ]] && export PYTHONPATH=$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}
  step "timing probe" 100 cuda "$PY" benchmarks/gpu_crosscheck.py timing --json "$OUT/crosscheck.json"
  step "memory cross-check" 50 cuda "$PY" benchmarks/gpu_crosscheck.py memory --json "$OUT/crosscheck.json"
  step "memory probes" 70 cuda "$PY" benchmarks/gpu_memory_probe.py --json "$OUT/memory_probe.json"
  # Flex compiles per case (tens of seconds each): alone and after the rest, a timeout costs only it.
  step "pytest -m gpu (not flex)" 80 cuda "$PY" -m pytest -v -m gpu -k "not flex" -p no:cacheprovider -rfEs tests/test_gpu.py
  step "pytest -m gpu (flex)" 70 cuda "$PY" -m pytest -v -m gpu -k flex -p no:cacheprovider -rfEs tests/test_gpu.py
  write_suite
  step "attnbench run (long_seq + decode, trimmed)" 100 any bash -c suite_run
  step "summary" "$SUMMARY_S" any bash -c summary
  echo
  echo "== steps ($(($(date +%s) - START))s of ${BUDGET}s)"
  printf '  %s\n' "${RESULTS[@]}"
  local files
  files=$(find "$OUT" -type f | wc -l)
  echo "OUT: $files files in $OUT"
  ((files <= 8)) || echo "warning: only 8 files come back from the device machine"
  ((${#FAILED[@]} == 0))
}

export -f env_report install_wheels suite_run summary
export SITE WORK DRY
main "$@" 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
