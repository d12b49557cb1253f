#!/usr/bin/env bash
# The prepared GPU check (benchmarks/gpu_check.py): the main job with ResNet-18, step throughput vs PyTorch at
# 64/224 px in float32/bfloat16 with MFU, and a K=16 population, in 8-10 minutes on one H200.
#
#   bash benchmarks/gpu_check.sh [--cpu] [--parts=main_job,throughput,population]   (or: make gpu-check)
#
# Results: $OUT/gpu_check.json and $OUT/gpu_check.md (OUT defaults to runs/gpu_check).
# Python: $PYTHON, else .venv/bin/python for --cpu, else python3 (a GPU machine's JAX with CUDA).
# A machine without network can carry what its Python lacks: wheels in .whl/ are installed into a private
# folder first, and data / the PyTorch reference script can travel in .gpu/data and .gpu/bench.
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ -n ${PYTHON:-} ]]; then py=$PYTHON
elif [[ " $* " == *" --cpu "* && -x .venv/bin/python ]]; then py=.venv/bin/python
else py=python3; fi
if compgen -G '.whl/*.whl' >/dev/null && [[ " $* " != *" --cpu "* ]]; then
  site=${TMPDIR:-/tmp}/medunlearn_site
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
    || { echo "error: could not install the wheels in .whl/" >&2; exit 1; }
  export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# JAX takes 75 % of GPU memory by default; leave room for the PyTorch reference run beside it.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.5}
exec "$py" benchmarks/gpu_check.py --out="${OUT:-runs/gpu_check}" "$@"
