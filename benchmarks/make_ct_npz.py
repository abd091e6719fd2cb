"""Write the sample chest CT as a compressed ``.npz`` that needs neither SimpleITK nor a network to read.

    .venv/bin/python benchmarks/make_ct_npz.py out/chest_ct.npz

The file holds ``hu`` (int16, ``[k, j, i]``, Hounsfield units) and ``ijk_to_ras`` (float64 4x4, voxel index to
world RAS in mm), the two fields of a :class:`XRayCTRegistrationLib.volume.Volume`. The CT is the sample chest CT
of :func:`XRayCTRegistrationLib.data.fetch_sample_data` (512x512x133), read with the library's reader (LPS on disk
to RAS). ``benchmarks/bench_gpu.py`` reads it on machines without SimpleITK.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "XRayCTRegistration"))

from XRayCTRegistrationLib.data import fetch_sample_data  # noqa: E402
from XRayCTRegistrationLib.volume import read_ct  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="the .npz to write")
    ap.add_argument("--ct", type=Path, default=None, help="a CT file to convert instead of the sample chest CT")
    args = ap.parse_args()
    path = args.ct if args.ct is not None else fetch_sample_data()["ct"]
    vol = read_ct(path)
    hu = np.rint(vol.data)
    if hu.min() < np.iinfo(np.int16).min or hu.max() > np.iinfo(np.int16).max:
        sys.exit(f"{path}: values outside the int16 range, not a CT in HU")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, hu=hu.astype(np.int16), ijk_to_ras=vol.ijk_to_ras)
    print(f"{args.out}: {vol.shape_ijk} voxels (i, j, k), spacing {np.round(vol.spacing, 3).tolist()} mm, "
          f"{args.out.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
