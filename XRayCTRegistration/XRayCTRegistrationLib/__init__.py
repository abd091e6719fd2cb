"""XRayCTRegistrationLib: 2D/3D X-ray to CT registration.

The library never imports slicer, qt or vtk. Frames, units and file formats follow
``CONVENTIONS.md``: millimetres and degrees at every user-facing surface, the world frame is
the CT's patient frame in RAS, a pose is the 4x4 rigid matrix ``world_from_camera``.
"""

__version__ = "0.1.0"
