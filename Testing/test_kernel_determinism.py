"""The numba ray-march kernels give the same bits whether a process compiled them or loaded them from the cache.

Each render runs in its own Python process with a ``NUMBA_CACHE_DIR`` under ``tmp_path``: the first finds it
empty and compiles, the next ones load the compiled kernels from it (checked with the dispatchers' cache
statistics), one of them on two threads. Their DRRs and pose Jacobians must be byte-identical. With the
sums inside ``parallel=True`` kernels they were not (last-bit differences, see :mod:`._raymarch`).
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

LIB = Path(__file__).resolve().parents[1] / "XRayCTRegistration"

RENDER = r"""
import sys
import numpy as np
from XRayCTRegistrationLib import _raymarch as rm

n, n_samples = 16, 64
k, j, i = np.mgrid[:n, :n, :n].astype(np.float32)
vol = 0.02 * np.exp(-((i - 8.7) ** 2 + (j - 8.0) ** 2 + (k - 8.4) ** 2) / 32.0)  # a blob, 1/mm
vol = (vol + np.random.default_rng(0).uniform(0, 0.005, vol.shape)).astype(np.float32)  # and texture
padded = rm.pad_volume(vol)
blocks = rm.block_table(padded)
ijk_from_cam = np.array([[[0.04, 0.001, 0.0, 8.0], [0.0, 0.04, 0.002, 8.0], [0.001, 0.0, 0.04, -16.0]]])
u, v = np.meshgrid(np.arange(32) - 15.5, np.arange(32) - 15.5)  # 32 x 32 detector
dirs = np.stack([u.ravel() * 10.0, v.ravel() * 10.0, np.full(u.size, 700.0)], axis=1)
image = np.zeros((1, u.size), np.float32)
rm.march(padded, blocks, ijk_from_cam, dirs, n_samples, image)
image_j = np.zeros((1, u.size), np.float32)
jac = np.zeros((1, u.size, 6), np.float32)
rm.march_with_jacobian(padded, blocks, ijk_from_cam, dirs, n_samples, image_j, jac)
kernels = (rm._march_part, rm._march_with_jacobian_part, rm._in_parts6, rm._in_parts8)  # and their launchers
hits = [f.stats.cache_hits.total() for f in kernels]
np.savez(sys.argv[1], image=image, image_j=image_j, jac=jac, hits=np.array(hits))
"""


def render(tmp_path: Path, name: str, threads: int) -> dict[str, np.ndarray]:
    """Run :data:`RENDER` in a new process with the shared numba cache and ``threads`` numba threads."""
    out = tmp_path / f"{name}.npz"
    env = dict(os.environ, PYTHONPATH=f"{LIB}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               NUMBA_CACHE_DIR=str(tmp_path / "numba_cache"), NUMBA_NUM_THREADS=str(threads), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", RENDER, str(out)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as f:
        return dict(f)


def test_march_and_jacobian_bits_match_across_compile_cache_and_threads(tmp_path):
    fresh = render(tmp_path, "fresh", threads=1)
    cached = render(tmp_path, "cached", threads=1)
    cached_2 = render(tmp_path, "cached_2threads", threads=2)
    assert fresh["hits"].tolist() == [0, 0, 0, 0]  # compiled
    assert cached["hits"].min() > 0 and cached_2["hits"].min() > 0  # loaded from the cache
    assert fresh["image"].min() > 0 and np.abs(fresh["jac"]).max() > 0  # every ray crosses the volume
    for key in ("image", "image_j", "jac"):
        assert fresh[key].tobytes() == cached[key].tobytes(), f"{key}: compiled and cache-loaded kernels differ"
        assert cached[key].tobytes() == cached_2[key].tobytes(), f"{key}: 1 and 2 threads differ"
