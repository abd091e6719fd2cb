"""Stand-in for ``slicer.ScriptedLoadableModule``: the four base classes, reduced to what tests need."""

import logging
import os
import types
import unittest


class ScriptedLoadableModule:
    def __init__(self, parent=None):
        self.parent = parent if parent is not None else types.SimpleNamespace()
        self.moduleName = self.__class__.__name__
        self.parent.title = ""
        self.parent.categories = []
        self.parent.dependencies = []
        self.parent.contributors = []
        self.parent.helpText = ""
        self.parent.acknowledgementText = ""

    def getDefaultModuleDocumentationLink(self, docPage=""):
        return ""


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent
        self.moduleName = self.__class__.__name__[:-len("Widget")]

    def resourcePath(self, filename):
        import sys
        module = sys.modules[self.__class__.__module__]
        return os.path.join(os.path.dirname(module.__file__), "Resources", filename)

    def setup(self):
        pass

    def cleanup(self):
        pass


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        self.moduleName = self.__class__.__name__[:-len("Logic")]
        self.isSingletonParameterNode = True

    def getParameterNode(self):
        import slicer
        scene = slicer.mrmlScene
        for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScriptedModuleNode")):
            node = scene.GetNthNodeByClass(index, "vtkMRMLScriptedModuleNode")
            if node.GetAttribute("ModuleName") == self.moduleName:
                return node
        node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)
        node.SetName(scene.GenerateUniqueName(self.moduleName))
        node.SetAttribute("ModuleName", self.moduleName)
        node.SetSingletonTag(self.moduleName)
        return scene.AddNode(node)


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message, msec=1000):
        logging.info(message)

    def takeScreenshot(self, name, description, type=-1):
        pass
