"""Stand-in for ``slicer.app`` in testing mode."""

import tempfile


class _App:
    applicationName = "Slicer"
    majorVersion = 5  # the slicer-core the tests run on is 5.x, newer than the module's minimum
    minorVersion = 10
    temporaryPath = tempfile.gettempdir()

    def __init__(self):
        self.processEventsCalls = 0
        self.connections = []  # (signal, slot) of connect(): the tests emit them by hand

    def connect(self, signal, slot):
        self.connections.append((signal, slot))

    def testingEnabled(self):
        return True

    def processEvents(self):
        self.processEventsCalls += 1

    def setOverrideCursor(self, cursor):
        pass

    def restoreOverrideCursor(self):
        pass


app = _App()
