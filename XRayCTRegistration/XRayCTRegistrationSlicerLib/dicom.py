"""DICOM attributes of a volume loaded through Slicer's DICOM module, read from the DICOM database.

Slicer's DICOM plugins do not copy a radiograph's geometry into node attributes: they set
``DICOM.instanceUIDs`` (the SOP instance UIDs of the files the volume came from, space-separated).
The attributes are read back from the database as Slicer's DICOM browser does:
``database.fileForInstance(uid)`` gives the file, ``database.fileValue(file, "gggg,eeee")`` a value
(a string, multiple values separated by backslashes, "" when absent). The geometry then follows the
same rules as the library's reader (``xray.dicom_geometry``), and the C-arm angles those of
``carm.CArmPosition.from_tags``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"
"""Node attribute Slicer's DICOM plugins set: the SOP instance UIDs of the volume's files, space-separated."""

HINT_NAMES = {"sdd": "sdd", "row_spacing": "rowSpacing", "col_spacing": "colSpacing"}
"""The library's geometry hint names -> the Slicer module's parameter names."""


def defaultDatabase():
    """Slicer's DICOM database (``slicer.dicomDatabase``), None when there is none (no DICOM module)."""
    import slicer

    return getattr(slicer, "dicomDatabase", None)


def databaseTag(tag: str) -> str:
    """``"0018|1110"`` (the library's form) -> ``"0018,1110"`` (the database's)."""
    return tag.replace("|", ",").upper()


def instanceFile(node, database) -> str:
    """The file of the node's first DICOM instance, "" when the node did not come from the DICOM database."""
    uids = (node.GetAttribute(INSTANCE_UIDS_ATTRIBUTE) or "").split()
    if not uids or database is None:
        return ""
    return database.fileForInstance(uids[0]) or ""


def tagsOfNode(node, tags: Iterable[str], database=None) -> dict[str, str]:
    """``{"gggg|eeee": value}`` of the node's first DICOM instance for the given tags (absent ones left out).

    ``database`` defaults to :func:`defaultDatabase`; a node that did not come from it gives ``{}``.
    """
    database = database if database is not None else defaultDatabase()
    path = instanceFile(node, database)
    if not path:
        return {}
    values = {tag: database.fileValue(path, databaseTag(tag)) for tag in tags}
    return {tag: str(value).strip() for tag, value in values.items() if value and str(value).strip()}


def geometryFromDatabase(node, database=None, log: bool = False) -> tuple[dict[str, float], list[str]]:
    """Geometry of a node from its DICOM attributes in the database: any of ``sdd``, ``rowSpacing``, ``colSpacing``.

    Returns the values (mm) and the library reader's report of what it found (empty when the node has no
    DICOM instance in the database); with ``log`` the report is also logged.
    """
    from XRayCTRegistrationLib.xray import GEOMETRY_TAGS, dicom_geometry

    meta = tagsOfNode(node, GEOMETRY_TAGS, database)
    if not meta:
        return {}, []
    report: list[str] = []
    hints: dict[str, float] = {}
    dicom_geometry(meta, report, hints)
    for line in report if log else ():
        logging.info(f"X-ray '{node.GetName()}': {line}")
    return {HINT_NAMES[k]: v for k, v in hints.items() if k in HINT_NAMES}, report


def carmPositionOfNode(node, database=None):
    """The library's ``carm.CArmPosition`` of a node's DICOM attributes; ``InputError`` when they are missing."""
    from XRayCTRegistrationLib.carm import CARM_TAGS, CArmPosition
    from XRayCTRegistrationLib.errors import InputError

    database = database if database is not None else defaultDatabase()
    name = f"X-ray volume '{node.GetName()}'"
    if not instanceFile(node, database):
        raise InputError(f"{name}: not loaded from the DICOM database (no {INSTANCE_UIDS_ATTRIBUTE} found in it): "
                         "load the radiograph with the DICOM module to use its C-arm angles")
    position = CArmPosition.from_tags(tagsOfNode(node, CARM_TAGS, database), name)
    logging.info(f"{name}: C-arm at {position.describe()}")
    return position
