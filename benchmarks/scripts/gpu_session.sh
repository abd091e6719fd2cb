#!/usr/bin/env bash
# The GPU checks of one device session, in one call of a few minutes: the projector, registration and training
# benchmark (bench_gpu.py), backend parity of the registration (bench_backend_parity.py) and the physics DRR's speed
# on CUDA (bench_physics.py). The GPU machine has no network, SimpleITK or xraydb; its inputs are made beforehand on
# a machine with the project's environment, in bench_gpu_inputs/ (ignored by git, carried to the GPU machine):
#   python benchmarks/make_ct_npz.py bench_gpu_inputs/chest_ct.npz
#   pip download nanodrr==0.1.7 jaxtyping wadler_lindig roma platformdirs --no-deps -d bench_gpu_inputs/wheels
#   PYTHONPATH=XRayCTRegistration python benchmarks/bench_physics.py --save-tables bench_gpu_inputs/tables.npz
# Usage (from the repository root): OUT=folder bash benchmarks/scripts/gpu_session.sh
set -u
OUT=${OUT:-out_gpu}
IN=bench_gpu_inputs
mkdir -p "$OUT"
export PYTHONPATH=$PWD/XRayCTRegistration
nvidia-smi -L
timeout 330 python3 benchmarks/bench_gpu.py --ct $IN/chest_ct.npz --nanodrr-wheels $IN/wheels --train-seconds 15 \
  --out "$OUT/gpu.md" >"$OUT/gpu.log" 2>&1
echo "bench_gpu rc $?"
timeout 120 python3 benchmarks/bench_backend_parity.py $IN/chest_ct.npz --cases 12 \
  --out "$OUT/backend_parity_gpu.md" >"$OUT/parity.log" 2>&1
echo "bench_backend_parity rc $?"
timeout 150 python3 benchmarks/bench_physics.py --device cuda --skip-registration --runs 30 --ct $IN/chest_ct.npz \
  --tables $IN/tables.npz --out "$OUT" --tag physics_gpu >"$OUT/physics.log" 2>&1
echo "bench_physics rc $?"
tail -n 4 "$OUT"/*.log
