"""Stand-in for ``slicer.app`` in testing mode."""

import tempfile


class _App:
    applicationName = "Slicer"
    temporaryPath = tempfile.gettempdir()

    def __init__(self):
        self.processEventsCalls = 0

    def testingEnabled(self):
        return True

    def processEvents(self):
        self.processEventsCalls += 1

    def setOverrideCursor(self, cursor):
        pass

    def restoreOverrideCursor(self):
        pass


app = _App()
