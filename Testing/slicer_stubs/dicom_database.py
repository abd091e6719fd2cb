"""Stand-in for Slicer's DICOM database (``slicer.dicomDatabase``, a ctkDICOMDatabase) over real files.

Offers the two calls the module uses, with the database's conventions: ``fileForInstance(uid)`` gives the
file of a SOP instance ("" when unknown) and ``fileValue(file, "gggg,eeee")`` a value as a string (numbers as
written in the file, multiple values separated by backslashes, "" when absent). The files are read with pydicom.
"""

from __future__ import annotations

from pathlib import Path


class DicomDatabase:
    """An index of DICOM files by SOP instance UID."""

    def __init__(self, files=()) -> None:
        self._files: dict[str, str] = {}
        for path in files:
            self.insert(path)

    def insert(self, path) -> None:
        """Index one DICOM file."""
        import pydicom

        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        self._files[str(ds.SOPInstanceUID)] = str(Path(path))

    def fileForInstance(self, uid: str) -> str:
        """The file of a SOP instance, "" when the database does not hold it."""
        return self._files.get(uid, "")

    def fileValue(self, fileName: str, tag: str) -> str:
        """The value of ``tag`` (``"gggg,eeee"``) in a file, as a string; "" when absent."""
        import pydicom

        group, element = (int(part, 16) for part in tag.split(","))
        ds = pydicom.dcmread(fileName, stop_before_pixels=True)
        elem = ds.get((group, element))
        if elem is None or elem.value is None or elem.value == "":
            return ""
        value = elem.value
        if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
            return "\\".join(str(v) for v in value)
        return str(value)
