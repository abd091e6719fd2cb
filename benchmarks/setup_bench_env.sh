#!/usr/bin/env bash
# Create .venv-bench at the repository root: this project plus DiffDRR 0.6.1 (render path only), for
# benchmarks/bench_drr.py. Kept apart from .venv so DiffDRR's extra packages never reach the project.
#   bash benchmarks/setup_bench_env.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-bench
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
# torch first and pinned: a CPU build where one is provided (any other spec pulls GBs of CUDA packages).
$PIP install -q "torch==2.13.0"
$PIP install -q -e .
# DiffDRR without its declared dependencies (torchvision, timm, pyvista[all], ... are not needed to render).
$PIP install -q --no-deps "diffdrr==0.6.1"
# The packages DiffDRR's render path imports. kornia and torchio declare torch as a dependency: install them
# without dependencies so no second torch can come in, then their own light dependencies explicitly.
$PIP install -q --no-deps kornia kornia_rs torchio roma
$PIP install -q nibabel fastcore pandas einops scipy tqdm deprecated humanize typer rich packaging jaxtyping numpy
# matplotlib: the registration benchmark plots success against the initial error.
$PIP install -q matplotlib
# Fail loudly if anything replaced the pinned torch.
$VENV/bin/python - <<'PY'
import torch
assert torch.__version__.startswith("2.13.0"), f"unexpected torch {torch.__version__}"
print("torch", torch.__version__)
PY
echo "bench environment ready: $VENV"
