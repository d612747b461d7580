#!/usr/bin/env bash
# Stage the wheels that benchmarks/gpu_check.py installs on the GPU machine, here, where pip has a
# network: that machine (Python 3.12, x86-64, no network) lacks PyAV, array-api-compat and
# Polygraphy, and may lack pytest-timeout. Everything else the GPU tests and benchmarks/gpu.py
# import (torch, numpy, onnx, onnxruntime, onnxscript, einops, click, tqdm, pytest) is in its image.
#
#     bash benchmarks/gpu_stage.sh        # from the repository root; writes .whl/ (ignored by git)
#
# Then name ".whl" in the device tool's carry; the whole call (benchmarks/gpu_check.py says more):
#     run(command='PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py "$OUT"', timeout_s=420, carry=[".whl"])
# Exit status: 0 staged; 1 a download failed, two versions of one package are in .whl/ (pip would
# refuse to install them together: remove the stale one), or what travels would exceed 64 MiB.
set -euo pipefail

cd "$(dirname "$0")/.."
WHEELS=(av==18.1.0 array-api-compat==1.16.0 polygraphy==0.53.6 pytest-timeout==2.4.0)
# The GPU machine's Python and platform; pip matches each manylinux tag exactly.
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64
           manylinux1_x86_64)
LIMIT_MIB=64

mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]/#/--platform=}" -d .whl "${WHEELS[@]}"

# One wheel per distribution name (the part of the file name before the first '-').
duplicates=$(ls .whl/*.whl | xargs -n1 basename | cut -d- -f1 | tr 'A-Z-' 'a-z_' | sort | uniq -d)
if [[ -n "$duplicates" ]]; then
    echo "gpu_stage.sh: more than one wheel of $duplicates in .whl/: remove all but the one wanted" \
         "(${WHEELS[*]})" >&2
    exit 1
fi
ls -l .whl/*.whl | awk '{printf "%8.1f MiB  %s\n", $5 / 1048576, $9}'

# What the device tool sends: tracked and untracked-not-ignored files, plus the carried .whl/.
tree_bytes=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null \
             | awk '{s += $1} END {print s + 0}')
wheel_bytes=$(stat -c %s .whl/* | awk '{s += $1} END {print s + 0}')
total_mib=$(awk -v b=$((tree_bytes + wheel_bytes)) 'BEGIN {printf "%.1f", b / 1048576}')
awk -v t="$tree_bytes" -v w="$wheel_bytes" -v m="$total_mib" -v l="$LIMIT_MIB" 'BEGIN {
    printf "travels: working tree %.1f MiB + .whl %.1f MiB = %s MiB (limit %d MiB)\n", t / 1048576, w / 1048576, m, l }'
if awk -v m="$total_mib" -v l="$LIMIT_MIB" 'BEGIN {exit !(m >= l)}'; then
    echo "gpu_stage.sh: $total_mib MiB would travel, over the device tool's $LIMIT_MIB MiB" >&2
    exit 1
fi
