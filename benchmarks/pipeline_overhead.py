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

ct = read_ct(sample_ct_path()); cam = Camera(1020.0, 128, 128, 4.0, 4.0)
cases = ev.make_cases(ct, cam, 6, seed=0)
register(cases.volume_mu, cases[0].xray, cam, cases[0].world_from_camera_init, reference=cases.reference)
print("load", os.getloadavg())
ta, tb = [], []
for c in cases:
    for order in (0, 1):
        t = time.perf_counter()
        if order == 0:
            a = register(cases.volume_mu, c.xray, cam, c.world_from_camera_init, reference=cases.reference, method="opt-lncc")
            ta.append(time.perf_counter() - t)
        else:
            b = register_xray(None, c.xray, cam, c.world_from_camera_init, method="opt-lncc", volume_mu=cases.volume_mu, reference=cases.reference)
            tb.append(time.perf_counter() - t)
    assert np.array_equal(a.world_from_camera, b.world_from_camera)
print("register      median %.3f s, times %s" % (np.median(ta), np.round(ta, 3)))
print("register_xray median %.3f s, times %s" % (np.median(tb), np.round(tb, 3)))
print("median of per-case ratios xray/register %.3f" % np.median(np.array(tb) / np.array(ta)))
print("load", os.getloadavg())
