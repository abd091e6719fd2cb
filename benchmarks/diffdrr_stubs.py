"""Stand-ins for the two modules DiffDRR 0.6.1 imports but does not need to render DRRs.

``diffdrr.metrics`` imports ``torchvision.transforms.functional.gaussian_blur`` and
``diffdrr.registration`` imports ``timm``; neither is used by ``DRR.forward``. There is no CPU
torchvision build on these machines, so the benchmark registers these empty modules in
``sys.modules`` before importing diffdrr. Calling anything in them raises.
"""

import sys
import types


def _unavailable(*args, **kwargs):
    raise NotImplementedError("stand-in module: not available in the benchmark environment")


def install() -> None:
    if "torchvision" not in sys.modules:
        tv = types.ModuleType("torchvision")
        transforms = types.ModuleType("torchvision.transforms")
        functional = types.ModuleType("torchvision.transforms.functional")
        functional.gaussian_blur = _unavailable
        transforms.functional = functional
        tv.transforms = transforms
        sys.modules.update({"torchvision": tv, "torchvision.transforms": transforms,
                            "torchvision.transforms.functional": functional})
    if "timm" not in sys.modules:
        timm = types.ModuleType("timm")
        timm.create_model = _unavailable
        sys.modules["timm"] = timm
