"""Interleaved timing of registration.register and pipeline.register_xray on the same chest CT cases.

    NUMBA_NUM_THREADS=1 OMP_NUM_THREADS=1 PYTHONPATH=XRayCTRegistration python benchmarks/pipeline_overhead.py

Both calls run opt-lncc from each case's start in one process, alternately, and must give the same pose;
the times show what the pipeline adds (its set-up: the inputs, the method look-up, the timings).
"""

import os
import time

import numpy as np
from XRayCTRegistrationLib import evaluation as ev
from XRayCTRegistrationLib.data import sample_ct_path
from XRayCTRegistrationLib.geometry import Camera
from XRayCTRegistrationLib.pipeline import register_xray
from XRayCTRegistrationLib.registration import register
from XRayCTRegistrationLib.volume import read_ct


def main(n_cases: int = 6) -> None:
    ct = read_ct(sample_ct_path())
    cam = Camera(1020.0, 128, 128, 4.0, 4.0)
    cases = ev.make_cases(ct, cam, n_cases, seed=0)
    vol, ref = cases.volume_mu, cases.reference
    register(vol, cases[0].xray, cam, cases[0].world_from_camera_init, reference=ref)  # compile, build the pyramid
    print("load", os.getloadavg())
    t_register, t_pipeline = [], []
    for c in cases:
        t = time.perf_counter()
        a = register(vol, c.xray, cam, c.world_from_camera_init, reference=ref, method="opt-lncc")
        t_register.append(time.perf_counter() - t)
        t = time.perf_counter()
        b = register_xray(None, c.xray, cam, c.world_from_camera_init, method="opt-lncc", volume_mu=vol, reference=ref)
        t_pipeline.append(time.perf_counter() - t)
        assert np.array_equal(a.world_from_camera, b.world_from_camera)
    print(f"register      median {np.median(t_register):.3f} s, times {np.round(t_register, 3)}")
    print(f"register_xray median {np.median(t_pipeline):.3f} s, times {np.round(t_pipeline, 3)}")
    print(f"median of per-case ratios register_xray / register {np.median(np.divide(t_pipeline, t_register)):.3f}")
    print("load", os.getloadavg())


if __name__ == "__main__":
    main()
