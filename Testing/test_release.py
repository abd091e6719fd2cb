"""Release files: licence, Extensions Index description (validated against the index's schema), one dependency
list with version floors, the module's texts and its minimum Slicer version."""

import json
import re
import types
from pathlib import Path

import jsonschema
import pytest
import tomllib
from XRayCTRegistrationSlicerLib import about, dependencies
from XRayCTRegistrationSlicerLib.dependencies import (
    Requirement,
    missingPythonPackages,
    readRequirements,
    versionAtLeast,
)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "Testing" / "data" / "slicer-extension-catalog-entry-schema-v1.0.1.json"


def cmake_value(name: str) -> str:
    match = re.search(rf'set\({name} "([^"]*)"\)', (ROOT / "CMakeLists.txt").read_text(encoding="utf-8"))
    assert match, name
    return match.group(1)


def test_licence_is_the_one_pyproject_states():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["license"]["text"] == "BSD-3-Clause"
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("BSD 3-Clause License") and "Neither the name of the copyright holder" in text


def test_extension_description_validates_against_the_index_schema():
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    entry = json.loads((ROOT / "XRayCTRegistration.json").read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(entry, schema)
    assert entry["category"] == cmake_value("EXTENSION_CATEGORY") == "Registration"
    assert entry["build_dependencies"] == cmake_value("EXTENSION_DEPENDS").split() == ["PyTorch"]
    assert entry["scm_url"].removesuffix(".git") == cmake_value("EXTENSION_HOMEPAGE")
    # the schema does refuse what the index would refuse
    for bad in ({**entry, "tier": 9}, {**entry, "homepage": "x"}, {k: v for k, v in entry.items() if k != "scm_url"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_one_dependency_list_for_pip_and_slicer():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["dynamic"] == ["dependencies"]
    listed = pyproject["tool"]["setuptools"]["dynamic"]["dependencies"]["file"]
    assert [ROOT / p for p in listed] == [Path(dependencies.REQUIREMENTS_FILE)]
    requirements = readRequirements()
    assert Requirement("torch", "2.1") in requirements and Requirement("numba", "0.59") in requirements
    assert "Resources/requirements.txt" in (ROOT / "XRayCTRegistration" / "CMakeLists.txt").read_text(encoding="utf-8")


def test_version_floors_are_honoured():
    assert versionAtLeast("2.13.0+cpu", "2.1") and versionAtLeast("0.59", "0.59") and versionAtLeast("10", "10.0")
    assert not versionAtLeast("0.58.1", "0.59") and not versionAtLeast("1.9", "1.24")
    requirements = [Requirement("numpy", "1.24"), Requirement("torch", "2.1"), Requirement("no_such_package_here")]
    assert missingPythonPackages(requirements, version=lambda name: "99.0") == ["no_such_package_here"]
    assert missingPythonPackages(requirements, version=lambda name: "1.9") == ["numpy>=1.24", "no_such_package_here"]


def test_minimum_slicer_version_checked_at_module_load(ns, module, monkeypatch):
    with pytest.raises(RuntimeError, match=r"needs 3D Slicer 5.8 or newer .* this is Slicer 5.6"):
        about.checkSlicerVersion(5, 6, (3, 9))
    with pytest.raises(RuntimeError, match="Python 3.10"):
        about.checkSlicerVersion(5, 8, (3, 9))
    about.checkSlicerVersion(5, 8, (3, 12))
    loaded = module.XRayCTRegistration(types.SimpleNamespace())
    assert about.DOCUMENTATION_URL in loaded.parent.helpText
    assert all(paper.split(":")[1].split(",")[0].strip() in loaded.parent.acknowledgementText for paper in about.PAPERS)
    assert "SOPI" in loaded.parent.acknowledgementText and loaded.parent.contributors == about.CONTRIBUTORS
    monkeypatch.setattr(ns.slicer.app, "minorVersion", 6)
    with pytest.raises(RuntimeError, match="this is Slicer 5.6"):
        module.XRayCTRegistration(types.SimpleNamespace())


def test_dependencies_installed_on_first_use_with_consent(ns, monkeypatch):
    """``ensureDependencies``: asks before installing, installs what is absent or below its floor with that floor,
    and takes torch from the PyTorch extension with the list's floor."""
    import sys

    listed = [Requirement("torch", "2.1"), Requirement("numpy", "1.24"), Requirement("no_such_package_here", "1.0")]
    monkeypatch.setattr(dependencies, "readRequirements", lambda: listed)
    asked, installed = [], []
    monkeypatch.setattr(ns.slicer.util, "pip_install", installed.append, raising=False)
    for consent in (False, True):
        monkeypatch.setattr(ns.slicer.util, "confirmOkCancelDisplay",
                            lambda text, answer=consent, **kw: asked.append(text) or answer, raising=False)
        assert dependencies.ensureDependencies(askConfirmation=True) is consent
    assert installed == [["no_such_package_here>=1.0"]] and len(asked) == 2  # nothing installed without consent
    assert "no_such_package_here>=1.0" in asked[0] and "numpy" not in asked[0]  # numpy is there, above its floor
    # torch below the list's floor: the PyTorch extension is asked for that floor; without it, a clear error
    listed[0] = Requirement("torch", "99.0")
    requests = []
    extension = types.SimpleNamespace(PyTorchUtilsLogic=lambda: types.SimpleNamespace(
        installTorch=lambda **kw: requests.append(kw)))  # the user declines: installTorch returns None
    monkeypatch.setitem(sys.modules, "PyTorchUtils", extension)
    assert dependencies.ensureDependencies(askConfirmation=True) is False
    assert requests == [{"askConfirmation": True, "torchVersionRequirement": ">=99.0"}]
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)
    with pytest.raises(RuntimeError, match="needs the PyTorch extension"):
        dependencies.ensureDependencies(askConfirmation=True)
