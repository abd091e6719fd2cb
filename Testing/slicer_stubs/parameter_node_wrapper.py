"""Stand-in for ``slicer.parameterNodeWrapper``: typed properties over a vtkMRMLScriptedModuleNode.

Supports what the module declares: ``float``/``int``/``str``/``bool`` fields (optionally
``Annotated`` with :class:`WithinRange`, :class:`Choice` or another :class:`Validator`) stored as node parameters, and
fields typed with a MRML node class stored as node references.
"""

import typing


class Validator:
    """Base of the validators: ``validate(value)`` raises ValueError for a value it refuses."""

    def validate(self, value):
        raise NotImplementedError


class WithinRange:
    def __init__(self, minimum, maximum):
        self.minimum, self.maximum = minimum, maximum

    def validate(self, value):
        if not (self.minimum <= value <= self.maximum):
            raise ValueError(f"Value {value} must be within [{self.minimum}, {self.maximum}]")


class Choice:
    def __init__(self, choices):
        self.choices = list(choices)

    def validate(self, value):
        if value not in self.choices:
            raise ValueError(f"Value {value!r} must be one of {self.choices}")


class Default:
    def __init__(self, value):
        self.value = value


def _isNodeType(t):
    import slicer
    return isinstance(t, type) and issubclass(t, slicer.vtkMRMLNode)


def _makeProperty(name, annotation, default):
    base, validators = annotation, []
    if typing.get_origin(annotation) is typing.Annotated:
        base, *extras = typing.get_args(annotation)
        validators = [e for e in extras if hasattr(e, "validate")]
        default = next((e.value for e in extras if isinstance(e, Default)), default)
    if _isNodeType(base):
        def getter(self):
            return self.parameterNode.GetNodeReference(name)

        def setter(self, node):
            if node is not None and not isinstance(node, base):
                raise TypeError(f"{name}: expected {base.__name__}, got {node.GetClassName()}")
            self.parameterNode.SetNodeReferenceID(name, node.GetID() if node is not None else None)
        return property(getter, setter), None
    if default is None:
        default = base()

    def getter(self):
        text = self.parameterNode.GetParameter(name)
        if text == "":
            return default
        if base is bool:
            return text == "True"
        return base(text)

    def setter(self, value):
        value = base(value)
        for v in validators:
            v.validate(value)
        self.parameterNode.SetParameter(name, str(value))
    return property(getter, setter), default


def parameterNodeWrapper(cls):
    hints = typing.get_type_hints(cls, include_extras=True)
    defaults = {}
    for name, annotation in hints.items():
        prop, default = _makeProperty(name, annotation, cls.__dict__.get(name))
        setattr(cls, name, prop)
        if default is not None:
            defaults[name] = default

    def __init__(self, parameterNode):
        self.parameterNode = parameterNode
        for name, default in defaults.items():
            if not parameterNode.GetParameter(name):
                setattr(self, name, default)

    cls.__init__ = __init__
    cls.allParameters = dict(hints)
    cls.connectGui = lambda self, gui: object()
    cls.disconnectGui = lambda self, tag: None
    return cls
