"""Real DICOM radiographs for the tests, written with pydicom (XA with the C-arm positioner attributes)."""

from __future__ import annotations

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

XA_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.12.1"
"""X-Ray Angiographic Image Storage."""


def write_xa(path, pixels: np.ndarray, *, sdd: float | None = 1000.0, spacing=(4.0, 4.0), primary: float | None = 0.0,
             secondary: float | None = 0.0, sid: float | None = None, bits: int = 12) -> str:
    """Write a single-frame XA file holding ``pixels`` ``[rows, cols]`` (MONOCHROME2); returns its SOP instance UID.

    ``None`` leaves an attribute out.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = XA_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientName = "XA", "Phantom"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    for name, value in (("DistanceSourceToDetector", sdd), ("DistanceSourceToPatient", sid),
                        ("PositionerPrimaryAngle", primary), ("PositionerSecondaryAngle", secondary)):
        if value is not None:
            setattr(ds, name, value)
    if spacing is not None:
        ds.ImagerPixelSpacing = list(spacing)
    ds.PixelData = np.clip(np.round(pixels), 0, 2**bits - 1).astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return str(ds.SOPInstanceUID)
