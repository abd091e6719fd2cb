"""Stand-ins for the ``qt`` and ``ctk`` modules (PythonQt / CTK): names only, no GUI."""

import types


class _Signal:
    def __init__(self):
        self.slots = []

    def connect(self, slot):
        self.slots.append(slot)


class QTimer:
    def __init__(self, parent=None):
        self._active = False
        self.singleShot = False
        self.interval = 0
        self.timeout = _Signal()

    def setSingleShot(self, value):
        self.singleShot = value

    def setInterval(self, msec):
        self.interval = msec

    def isActive(self):
        return self._active

    def start(self, msec=None):
        self._active = True

    def stop(self):
        self._active = False

    def fire(self):
        self._active = False
        for slot in self.timeout.slots:
            slot()


class QMessageBox:
    Ok, Cancel, Yes, No, Retry, Close, NoButton = 0x400, 0x400000, 0x4000, 0x10000, 0x80000, 0x200000, 0
    Question, Critical, Warning, Information = 4, 3, 2, 1


class Qt:
    WaitCursor = 3


qt = types.ModuleType("qt")
qt.QTimer = QTimer
qt.QMessageBox = QMessageBox
qt.Qt = Qt

ctk = types.ModuleType("ctk")
