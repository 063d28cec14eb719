#!/usr/bin/env bash
# Builds .whl/ on this machine for the offline GPU machine (../shared/gpu.md): attnbench itself,
# and every dependency of it (and of those, and so on) that the GPU image lacks, as wheels that
# gpu_check.sh installs there with `pip install --no-index --no-deps`.
#   bash benchmarks/build_wheels.sh && ls .whl
# Uses pip's configured indexes only; PYTHON picks the interpreter (default .venv/bin/python,
# else python3), WHL_DIR the folder (default .whl, which git ignores). Fails when the wheels would
# take over half the 64 MiB that travels with the working tree.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}
WHL=${WHL_DIR:-.whl}
LIMIT_MIB=64
# What the GPU image already holds (../shared/gpu.md; psutil too, pyperf's one need). torch is
# never carried: the check uses the CUDA build that is there.
IMAGE="torch triton pluggy rich jinja2 markupsafe pandas numpy python-dateutil pytz tzdata six pyyaml pytest
pytest-benchmark nvidia-ml-py transformers psutil packaging"
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

rm -rf "$WHL"
mkdir -p "$WHL"
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
# A clean copy of the working tree's package: an in-tree build/ would carry stale modules into the wheel.
git ls-files -z -co --exclude-standard -- attnbench pyproject.toml README.md \
  | tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C "$src"
echo "== attnbench (pip wheel --no-deps)"
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WHL" "$src" \
  || "$PY" -m pip wheel -q --no-deps -w "$WHL" "$src"

# Requirements of a wheel that the image lacks: NAME==VERSION when this interpreter has it (the
# version tested here), else the requirement as written.
missing() {
  "$PY" - "$1" "$IMAGE" <<'PY'
import re, sys, zipfile
from importlib import metadata
wheel, image = sys.argv[1], set(sys.argv[2].split())
meta = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".dist-info/METADATA"))
for line in zipfile.ZipFile(wheel).read(meta).decode().splitlines():
    if not line.startswith("Requires-Dist:") or "extra ==" in line:
        continue
    req = line.split(":", 1)[1].split(";")[0].strip()
    name = re.match(r"[A-Za-z0-9._-]+", req).group(0)
    if re.sub(r"[-_.]+", "-", name).lower() in image:
        continue
    try:
        print(f"{name}=={metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(req.replace(" ", ""))
PY
}

queue=("$WHL"/attnbench-*.whl)
done_names=" "
while ((${#queue[@]})); do
  wheel=${queue[0]}
  queue=("${queue[@]:1}")
  for req in $(missing "$wheel"); do
    name=${req%%[=<>!~]*}
    [[ $done_names == *" $name "* ]] && continue
    done_names+="$name "
    echo "== $req (needed by $(basename "$wheel"), not in the GPU image)"
    before=$(ls "$WHL")
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      "${PLATFORMS[@]}" -d "$WHL" "$req"
    for new in $(comm -13 <(echo "$before") <(ls "$WHL")); do queue+=("$WHL/$new"); done
  done
done

size=$(du -cb "$WHL"/*.whl | tail -n 1 | cut -f1)
ls -la "$WHL"
echo "== .whl: $((size / 1024)) KiB of the ${LIMIT_MIB} MiB that travels (carry it: run(carry=[\".whl\"]))"
if ((size > LIMIT_MIB * 1024 * 1024 / 2)); then
  echo "error: .whl/ takes more than half of the ${LIMIT_MIB} MiB limit, leaving too little for the tree" >&2
  exit 1
fi
