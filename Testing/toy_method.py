"""A toy refinement method for the tests: one module and one registration call.

``toy-ncc`` is intensity-based registration with NCC on a single coarse level and a small
iteration budget: a real (if crude) method, so the benchmark rows it produces mean something.
"""

from XRayCTRegistrationLib.pipeline import register_method
from XRayCTRegistrationLib.registration import register


def toy_register(volume_mu, xray, camera, init_world_from_camera, **options):
    """Register with NCC on the detector downsampled by 2, at most 25 iterations."""
    return register(volume_mu, xray, camera, init_world_from_camera, method="opt-ncc",
                    **{"levels": (2,), "max_iterations": (25,), **options})


register_method("toy-ncc", toy_register, description="toy: NCC, one coarse level")
