"""Inputs of the bad-input and fault suite (test_faults.py): one folder of good and broken files.

Everything is tiny (a 24^3 CT of 8 mm voxels, a 24 x 24 detector) so that a case takes a few
milliseconds when refused. :func:`build_inputs` writes the folder once; every case runs on a copy.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from XRayCTRegistrationLib.geometry import Camera, ReferenceView
from XRayCTRegistrationLib.phantoms import chest_phantom
from XRayCTRegistrationLib.projector import render
from XRayCTRegistrationLib.volume import Volume, hu_to_mu, volume_to_sitk

CAMERA = Camera(sdd=1000.0, rows=24, cols=24, row_spacing=10.0, col_spacing=10.0)
"""The detector of the suite: 24 x 24 pixels of 10 mm (about 170 mm wide at the isocentre)."""

GT = np.array([3.0, -2.0, 4.0, 5.0, -4.0, 6.0])
"""Pose parameters (degrees, mm) of the X-ray."""

INIT = GT + np.array([2.0, -1.0, 1.5, 3.0, -2.0, 2.0])
"""Pose parameters (degrees, mm) of the initial pose."""


def _lps_image(data_kji: np.ndarray, ijk_to_ras: np.ndarray) -> sitk.Image:
    return volume_to_sitk(Volume(data_kji, ijk_to_ras))


def _pose_json(path: Path, matrix) -> None:
    path.write_text(json.dumps({"world_from_camera": np.asarray(matrix).tolist()}))


def _flip_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x5A
    path.write_bytes(bytes(data))


def _truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def write_dicom_series(folder: Path, data_kji: np.ndarray, spacing, z_positions, sizes=None, orientations=None) -> None:
    """A CT series, one file per slice, with the position and orientation tags of each slice given."""
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.77"
    for k, z in enumerate(z_positions):
        plane = data_kji[min(k, len(data_kji) - 1)]
        if sizes is not None and sizes[k] is not None:
            plane = np.resize(plane, sizes[k])
        s = sitk.GetImageFromArray(plane[None].astype(np.int16))
        s.SetSpacing(spacing)
        tags = {"0008|0060": "CT", "0008|0018": f"{uid}.{k + 1}", "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
                "0020|000e": uid, "0020|0011": "1", "0020|0013": str(k + 1),
                "0020|0032": f"-90.000\\-90.000\\{z:.3f}",
                "0020|0037": orientations[k] if orientations else "1\\0\\0\\0\\1\\0",
                "0018|0050": f"{spacing[2]:.3f}", "0028|0030": f"{spacing[1]:.3f}\\{spacing[0]:.3f}"}
        for key, value in tags.items():
            s.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice_{k:03d}.dcm"))
        writer.Execute(s)


def _model_dict(ct: Volume, reference: ReferenceView) -> dict:
    """A complete model-file dictionary (untrained weights) for the suite's CT and camera."""
    from XRayCTRegistrationLib.training import FILE_FORMAT, FORMAT_VERSION, TrainOptions, build_network
    from XRayCTRegistrationLib.training_data import PoseRange, ct_hash

    options = TrainOptions(iterations=1, batch_size=2, pose_range=PoseRange(10.0, 10.0), width=0.25, depth=0.2)
    net = build_network(options)
    return {"format": FILE_FORMAT, "format_version": FORMAT_VERSION, "library_version": "0", "method": "regressor",
            "options": options.to_dict(), "network": net.config.to_dict(),
            "ct": {"sha256": ct_hash(ct), "shape_ijk": list(ct.shape_ijk), "source": "ct.nrrd"},
            "geometry": CAMERA.to_dict(), "reference": reference.to_dict(),
            "pose_range": options.pose_range.to_dict(), "state_dict": net.state_dict(),
            "optimizer": torch.optim.AdamW(net.parameters()).state_dict(),
            "step": 1, "train_time_s": 0.1, "history": [], "complete": True}


class Evil:
    """Unpickling this runs a shell command: a model file must never be unpickled with code."""

    def __reduce__(self):
        return (print, ("PWNED",))


def build_inputs(d: Path) -> None:
    """Write every input of the suite into the folder ``d`` (see the names used in test_faults.py)."""
    ct = chest_phantom(shape_ijk=(24, 24, 24), spacing=(8.0, 8.0, 8.0))
    ref = ReferenceView.ap(ct.center, CAMERA.sdd)
    _write_cts(d, ct)
    _write_dicom_series(d)
    _write_geometries(d)
    _write_poses(d, ct, ref)
    _write_xrays(d, ct, ref)
    _write_models(d, ct, ref)


def _write_cts(d: Path, ct: Volume) -> None:
    """Good and broken CT files."""
    hu = ct.data.astype(np.float32)
    img = _lps_image(hu, ct.ijk_to_ras)
    sitk.WriteImage(img, str(d / "ct.nrrd"), True)
    sitk.WriteImage(img, str(d / "ct.nii.gz"), True)
    sitk.WriteImage(img, str(d / "ct.mha"), True)
    sitk.WriteImage(img, str(d / "ct.nii"), False)
    # broken CTs
    for name, keep in (("ct_cut.nii.gz", 0.6), ("ct_cut.nrrd", 0.7), ("ct_cut.mha", 0.7), ("ct_cut.nii", 0.6)):
        src = d / name.replace("_cut", "")
        (d / name).write_bytes(src.read_bytes())
        _truncate(d / name, keep)
    (d / "ct_flip.nii.gz").write_bytes((d / "ct.nii.gz").read_bytes())
    _flip_byte(d / "ct_flip.nii.gz", -6)  # the length/CRC trailer: data intact for a reader that skips the check
    (d / "ct_flip.mha").write_bytes((d / "ct.mha").read_bytes())
    _flip_byte(d / "ct_flip.mha", -3)
    nan = hu.copy()
    nan[12, 12, 12] = np.nan
    sitk.WriteImage(_lps_image(nan, ct.ijk_to_ras), str(d / "ct_nan.nii"), False)
    sitk.WriteImage(_lps_image(nan, ct.ijk_to_ras), str(d / "ct_nan.nii.gz"), True)
    sitk.WriteImage(_lps_image(nan, ct.ijk_to_ras), str(d / "ct_nan.nrrd"))
    inf = hu.copy()
    inf[3, 4, 5] = np.inf
    sitk.WriteImage(_lps_image(inf, ct.ijk_to_ras), str(d / "ct_inf.nrrd"))
    sitk.WriteImage(_lps_image(np.zeros_like(hu), ct.ijk_to_ras), str(d / "ct_const.nrrd"))
    sitk.WriteImage(sitk.GetImageFromArray(hu[12]), str(d / "ct_2d.nrrd"))
    sitk.WriteImage(sitk.GetImageFromArray(np.stack([hu] * 3, -1), isVector=True), str(d / "ct_rgb.nrrd"))
    (d / "ct_empty.nrrd").write_bytes(b"")
    (d / "ct_text.nrrd").write_text("this is not an image\n")
    (d / "ct_junk.nii.gz").write_bytes(b"\x1f\x8b" + bytes(range(200)))
    (d / "empty_folder").mkdir()
    sitk.WriteImage(_lps_image((hu > 300).astype(np.int16), ct.ijk_to_ras), str(d / "labels.nrrd"))


def _write_dicom_series(d: Path) -> None:
    """DICOM series: a good one and broken ones (2 mm slices at z = 0, 2, 4, ...)."""
    rng = np.random.default_rng(0)
    slices = rng.integers(-1000, 1500, size=(8, 12, 12)).astype(np.int16)
    z = [2.0 * k for k in range(8)]
    write_dicom_series(d / "dicom_ok", slices, (2.0, 2.0, 2.0), z)
    write_dicom_series(d / "dicom_gap", slices, (2.0, 2.0, 2.0), z[:4] + z[5:])
    write_dicom_series(d / "dicom_dup", slices, (2.0, 2.0, 2.0), z[:4] + [z[3]] + z[4:7])
    write_dicom_series(d / "dicom_uneven", slices, (2.0, 2.0, 2.0), [0, 2, 4, 6, 8.5, 11, 13.5, 16])
    write_dicom_series(d / "dicom_mixsize", slices, (2.0, 2.0, 2.0), z, sizes=[None] * 7 + [(10, 12)])
    write_dicom_series(d / "dicom_mixorient", slices, (2.0, 2.0, 2.0), z,
                       orientations=["1\\0\\0\\0\\1\\0"] * 7 + ["0\\1\\0\\0\\0\\-1"])


def _write_geometries(d: Path) -> None:
    """Good and broken geometry sidecars."""
    CAMERA.save(d / "geom.json")
    cam = CAMERA.to_dict()
    for name, value in (("geom_list", [1, 2]), ("geom_missing", {"sdd": 1000, "rows": 24}),
                        ("geom_neg", {**cam, "sdd": -5}), ("geom_str", {**cam, "sdd": "abc"}),
                        ("geom_rows0", {**cam, "rows": 0}), ("geom_rows_frac", {**cam, "rows": 2.5}),
                        ("geom_huge_sdd", {**cam, "sdd": 1e300}), ("geom_bool", {**cam, "sdd": True}),
                        ("geom_spacing0", {**cam, "row_spacing": 0}),
                        ("geom_huge", {**cam, "rows": 20000, "cols": 20000}),
                        ("geom_big", {**cam, "rows": 8000, "cols": 8000})):
        (d / f"{name}.json").write_text(json.dumps(value))
    (d / "geom_nan.json").write_text(json.dumps({**CAMERA.to_dict(), "sdd": float("nan")}))
    (d / "geom_bad.json").write_text("{sdd: 1000")


def _write_poses(d: Path, ct: Volume, ref: ReferenceView) -> None:
    """Good and broken pose files, target points."""
    gt, init = ref.pose(GT), ref.pose(INIT)
    _pose_json(d / "pose.json", gt)
    _pose_json(d / "init.json", init)
    (d / "pose_none.json").write_text(json.dumps({"pose": 1}))
    (d / "pose_bad.json").write_text("[[1, 0")
    _pose_json(d / "pose_3x3.json", np.eye(3))
    _pose_json(d / "pose_scaled.json", np.diag([2.0, 2.0, 2.0, 1.0]))
    _pose_json(d / "pose_lastrow.json", np.vstack([gt[:3], [0, 0, 1, 1]]))
    (d / "pose_nan.json").write_text(json.dumps({"world_from_camera": [[float("nan")] * 4] * 4}))
    (d / "pose_str.json").write_text(json.dumps({"world_from_camera": [["a"] * 4] * 4}))
    far = gt.copy()
    far[:3, 3] = 1e308
    _pose_json(d / "pose_far.json", far)
    inside = gt.copy()
    inside[:3, 3] = ct.center + 5.0
    _pose_json(d / "pose_inside.json", inside)
    pts = ct.center + np.array([[10.0, 0, 0], [0, 20, 0], [0, 0, 30]])
    (d / "points.json").write_text(json.dumps(pts.tolist()))
    (d / "points_src.json").write_text(json.dumps([gt[:3, 3].tolist(), pts[0].tolist()]))
    (d / "points_bad.json").write_text(json.dumps([[1, 2]]))


def _write_xrays(d: Path, ct: Volume, ref: ReferenceView) -> None:
    """Good and broken X-ray images (with sidecars where they need one)."""
    gt = ref.pose(GT)
    mu = Volume(hu_to_mu(ct.data), ct.ijk_to_ras)
    image = render(mu, CAMERA, gt, n_samples=64)
    sitk.WriteImage(sitk.GetImageFromArray(image), str(d / "xray.nrrd"))
    CAMERA.save(d / "xray.json")
    sitk.WriteImage(sitk.GetImageFromArray(image), str(d / "xray_nogeom.nrrd"))
    sitk.WriteImage(sitk.GetImageFromArray(image), str(d / "xray_cut.nii.gz"), True)
    CAMERA.save(d / "xray_cut.json")
    _truncate(d / "xray_cut.nii.gz", 0.5)
    sitk.WriteImage(sitk.GetImageFromArray(np.stack([image] * 4)), str(d / "xray_3d.nrrd"))
    CAMERA.save(d / "xray_3d.json")
    bad = image.copy()
    bad[3, 3] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(bad), str(d / "xray_nan.nrrd"))
    CAMERA.save(d / "xray_nan.json")
    sitk.WriteImage(sitk.GetImageFromArray(np.ones_like(image)), str(d / "xray_const.nrrd"))
    CAMERA.save(d / "xray_const.json")
    sitk.WriteImage(sitk.GetImageFromArray(image[:20]), str(d / "xray_small.nrrd"))
    CAMERA.save(d / "xray_small.json")
    (d / "xray_empty.nrrd").write_bytes(b"")
    (d / "xray_text.png").write_text("not a png")


def _write_models(d: Path, ct: Volume, ref: ReferenceView) -> None:
    """A good model file and damaged ones."""
    good = _model_dict(ct, ref)
    torch.save(good, d / "model.pt")
    torch.save({**good, "format_version": "abc"}, d / "model_version.pt")
    torch.save({k: v for k, v in good.items() if k not in ("state_dict", "options")}, d / "model_keys.pt")
    shapes = dict(good["state_dict"])
    first = next(iter(shapes))
    shapes[first] = torch.zeros(3, 3)
    torch.save({**good, "state_dict": shapes}, d / "model_shapes.pt")
    torch.save({**good, "geometry": {"sdd": "x"}}, d / "model_geometry.pt")
    torch.save({**good, "format_version": 99}, d / "model_newer.pt")
    torch.save({**good, "optimizer": {}}, d / "model_optimizer.pt")
    torch.save({"weights": [1, 2]}, d / "model_notag.pt")
    torch.save([1, 2, 3], d / "model_list.pt")
    (d / "model_evil.pt").write_bytes(pickle.dumps(Evil()))
    (d / "model_text.pt").write_text("not a model")
    (d / "model_empty.pt").write_bytes(b"")


def snapshot(d: Path) -> dict[str, str]:
    """Every file and folder under ``d``: relative path -> SHA-1 of its bytes (``'dir'`` for folders)."""
    out = {}
    for p in sorted(d.rglob("*")):
        rel = str(p.relative_to(d))
        out[rel] = "dir" if p.is_dir() else hashlib.sha1(p.read_bytes()).hexdigest()
    return out
