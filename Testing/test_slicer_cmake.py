"""The extension's CMake files list every Python file of the module, and the resources exist."""

import re
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "XRayCTRegistration"


def cmake_list(text: str, name: str) -> list[str]:
    block = re.search(rf"set\({name}\s*(.*?)\)", text, re.S)
    assert block, f"no set({name} ...) block"
    return block.group(1).split()


def test_module_python_scripts_match_files_on_disk():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    listed = [s.replace("${MODULE_NAME}", "XRayCTRegistration") for s in cmake_list(text, "MODULE_PYTHON_SCRIPTS")]
    on_disk = ["XRayCTRegistration.py"] + sorted(
        str(p.relative_to(MODULE_DIR)) for package in ("XRayCTRegistrationLib", "XRayCTRegistrationSlicerLib")
        for p in (MODULE_DIR / package).rglob("*.py") if "__pycache__" not in p.parts)
    assert len(listed) == len(set(listed)), "a script is listed twice"
    assert sorted(listed) == sorted(on_disk)


def test_module_resources_exist():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    resources = [s.replace("${MODULE_NAME}", "XRayCTRegistration") for s in cmake_list(text, "MODULE_PYTHON_RESOURCES")]
    assert "Resources/UI/XRayCTRegistration.ui" in resources
    for r in resources:
        assert (MODULE_DIR / r).is_file(), r
    icon = Image.open(MODULE_DIR / "Resources/Icons/XRayCTRegistration.png")
    assert icon.size == (128, 128)


def test_extension_metadata_and_self_test_registered():
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(rf"set\({key} \"[^\"]+\"\)", text), key
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text
    assert "add_subdirectory(XRayCTRegistration)" in text
    assert (ROOT / "Resources" / "XRayCTRegistration.png").is_file()
    test_cmake = (MODULE_DIR / "Testing" / "Python" / "CMakeLists.txt").read_text(encoding="utf-8")
    pattern = r"slicer_add_python_unittest\(SCRIPT \$\{CMAKE_CURRENT_SOURCE_DIR\}/(\S+)\)"
    script = re.search(pattern, test_cmake).group(1)
    assert (MODULE_DIR / "Testing" / "Python" / script).is_file()
