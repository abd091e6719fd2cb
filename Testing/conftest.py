"""Make the library and the Slicer module importable from the source tree."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "XRayCTRegistration"))
