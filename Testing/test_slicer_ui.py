"""The module's .ui file: loads with Qt's QUiLoader, has every widget the code uses, and its
SlicerParameterName properties match the parameter node's fields."""

import os
import re
import typing
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "XRayCTRegistration" / "XRayCTRegistration.py"
UI = ROOT / "XRayCTRegistration" / "Resources" / "UI" / "XRayCTRegistration.ui"


@pytest.fixture(scope="module")
def ui_root():
    from PySide6.QtCore import QFile
    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    f = QFile(str(UI))
    assert f.open(QFile.ReadOnly)
    loader = QUiLoader()
    widget = loader.load(f)
    f.close()
    assert widget is not None, loader.errorString()
    yield widget
    widget.deleteLater()
    del app


def parameter_fields():
    from mrml_scene import install

    install()
    import XRayCTRegistration as M

    return set(typing.get_type_hints(M.XRayCTRegistrationParameterNode, include_extras=True))


def code_widget_names():
    names = set(re.findall(r"self\.ui\.(\w+)", MODULE.read_text(encoding="utf-8")))
    # sliders reached as getattr(self.ui, f"{name}Slider") for each pose parameter
    if 'getattr(self.ui, f"{name}Slider")' in MODULE.read_text(encoding="utf-8"):
        names |= {f"{n}Slider" for n in ("rx", "ry", "rz", "tx", "ty", "tz")}
    return names


def test_every_widget_used_in_code_exists(ui_root):
    from PySide6.QtWidgets import QWidget

    names = code_widget_names()
    assert {"registerButton", "cancelButton", "progressBar", "resultLabel", "rxSlider"} <= names
    missing = sorted(n for n in names if ui_root.findChild(QWidget, n) is None)
    assert missing == []


def test_parameter_names_match_parameter_node(ui_root):
    from PySide6.QtWidgets import QWidget

    bound = {}
    for w in ui_root.findChildren(QWidget):
        value = w.property("SlicerParameterName")
        if value:
            assert value not in bound, f"{value} bound twice ({bound.get(value)}, {w.objectName()})"
            bound[value] = w.objectName()
    fields = parameter_fields()
    assert set(bound) - fields == set(), "SlicerParameterName without a parameter-node field"
    assert fields - set(bound) == set(), "parameter-node field without a widget"
    assert bound["rx"] == "rxSlider" and bound["method"] == "methodComboBox"
    assert bound["xrayKind"] == "xrayKindComboBox" and bound["xrayVolume"] == "xrayVolumeSelector"
    assert bound["initialiserModel"] == "initialiserModelPathLineEdit"
    assert bound["initialiserMethod"] == "initialiserMethodComboBox"
    assert bound["trainingMinutes"] == "trainingMinutesSpinBox"
    assert ui_root.findChild(QWidget, "initialiserModelPathLineEdit").metaObject().className() != "QLineEdit"
    assert bound["refinementModel"] == "refinementModelPathLineEdit"
    assert ui_root.findChild(QWidget, "refinementModelPathLineEdit").metaObject().className() != "QLineEdit"


def test_refinement_model_field_is_labelled_for_translation_next_to_the_method():
    text = UI.read_text(encoding="utf-8")
    label = text[text.index('name="refinementModelPathLineEditLabel"'):]
    assert "<string>Refinement model:</string>" in label[:label.index("</widget>")]
    field = text[text.index('name="refinementModelPathLineEdit"'):]
    field = field[:field.index("</widget>")]
    assert "<string>Model file (.pt) of a learned refinement method" in field and 'notr="true"' not in field
    rows = re.findall(r'<item row="(\d+)" column="1">\s*<widget class="\w+" name="(\w+)"', text)
    rows = {name: int(row) for row, name in rows}
    # under the method: its finishing option, then the refinement model, then the initialiser model
    assert rows["finishFitCheckBox"] == rows["methodComboBox"] + 1
    assert rows["refinementModelPathLineEdit"] == rows["methodComboBox"] + 2
    assert rows["initialiserModelPathLineEdit"] == rows["methodComboBox"] + 3


def test_choices_match_combo_boxes_and_library(ui_root):
    from mrml_scene import install
    from PySide6.QtWidgets import QComboBox
    from XRayCTRegistrationLib.registration import METHODS
    from XRayCTRegistrationLib.registry import method_names
    from XRayCTRegistrationLib.xray import KINDS

    install()
    import XRayCTRegistration as M

    def items(name):
        combo = ui_root.findChild(QComboBox, name)
        return [combo.itemText(i) for i in range(combo.count())]

    # the .ui lists the built-in methods (the widget refills the list from the registry in setup())
    assert items("methodComboBox") == M.registrationMethods() == list(method_names("refine"))
    assert list(method_names("refine"))[:len(METHODS)] == list(METHODS)  # the intensity methods first
    assert "sopi-fine" in method_names("refine")
    # the names are the library's own objects, not copies
    assert items("xrayKindComboBox") == list(M.XRAY_KINDS) and M.XRAY_KINDS is KINDS
    from XRayCTRegistrationLib.names import INITIALISER_METHODS as INIT_METHODS

    assert items("initialiserMethodComboBox") == list(M.INITIALISER_METHODS) and M.INITIALISER_METHODS is INIT_METHODS


def test_pose_slider_ranges_match_parameter_ranges():
    # ranges in the .ui and in the parameter node's WithinRange must agree (checked on the XML text)
    text = UI.read_text(encoding="utf-8")
    for name, lo, hi in [("rx", -180, 180), ("rz", -180, 180), ("tx", -300, 300), ("tz", -300, 300)]:
        block = text[text.index(f'name="{name}Slider"'):]
        block = block[:block.index("</widget>")]
        assert re.search(rf"<double>{lo}\.0</double>", block) and re.search(rf"<double>{hi}\.0</double>", block)


def test_device_choices_match_combo_box(ui_root):
    from PySide6.QtWidgets import QComboBox
    from XRayCTRegistrationSlicerLib.rendering import DEVICES

    combo = ui_root.findChild(QComboBox, "deviceComboBox")
    assert [combo.itemText(i) for i in range(combo.count())] == list(DEVICES) == ["auto", "cpu", "cuda"]
