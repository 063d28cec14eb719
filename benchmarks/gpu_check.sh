#!/usr/bin/env bash
# The GPU check, in one command for an offline CUDA machine (see ../shared/gpu.md):
#   bash benchmarks/gpu_check.sh OUT_DIR
# Installs attnbench and pyperf from the carried wheels in .whl/, runs `pytest -m gpu`,
# a trimmed long_seq run on cuda (flex left to pytest: it compiles per case), and the independent cross-checks (do_bench timing,
# max_memory_allocated memory); leaves results.json, index.html, the cross-check JSON
# and a log in OUT_DIR, and prints a short table last. Budget: about 6 minutes.
set -uo pipefail
OUT=${1:?usage: gpu_check.sh OUT_DIR}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1

python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"

echo "== pytest -m gpu"
timeout 150 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -n 25
echo "== attnbench run suites/long_seq.yaml (cuda, trimmed)"
timeout 200 python3 -m attnbench run suites/long_seq.yaml --device cuda --quiet \
  --where seq_q=2048,8192 --where head_dim=128 --where dtype=bfloat16 \
  --impl 'sdpa*' --impl eager --impl chunked --exclude sdpa.math --processes 1 \
  --output "$OUT/run" --timeout 60
echo "== cross-checks"
timeout 120 python3 benchmarks/gpu_crosscheck.py --json "$OUT/crosscheck.json"
cp "$OUT/run/results.json" "$OUT/results.json" 2>/dev/null
cp "$OUT/run/index.html" "$OUT/index.html" 2>/dev/null
rm -rf "$OUT/run"

echo "== summary"
python3 - "$OUT/results.json" <<'PY'
import sys
from attnbench.results import load
df = load(sys.argv[1])
cols = ["impl", "seq_q", "mask", "pass", "status", "time_ms_median", "tflops", "pct_peak_tflops", "peak_bytes", "rel_err"]
print(df[[c for c in cols if c in df.columns]].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
PY
