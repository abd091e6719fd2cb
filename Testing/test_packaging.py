"""The pip package: a wheel built from the source tree holds every library module (networks/ included),
and installed into a fresh virtual environment it imports and runs ``xrayctreg --help``.

The fresh environment has no pip and no network: the wheel is installed by this interpreter's pip
(``--python``), and the third-party packages (torch, numpy, ...) come from this interpreter's
site-packages through a path file, whose own path files (the editable install) are not run.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "XRayCTRegistration" / "XRayCTRegistrationLib"


def library_modules() -> list[str]:
    out = []
    for p in sorted(LIBRARY.rglob("*.py")):
        if "__pycache__" in p.parts:
            continue
        parts = p.relative_to(LIBRARY.parent).with_suffix("").parts
        out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def clean_env() -> dict[str, str]:
    """This environment without PYTHONPATH (which would put the source tree first)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", PIP_NO_CACHE_DIR="1")
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    pytest.importorskip("setuptools")
    # build from a copy of what the package is made of: an in-tree build/ folder would leak stale files
    src = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(LIBRARY, src / "XRayCTRegistration" / LIBRARY.name, ignore=shutil.ignore_patterns("__pycache__"))
    (src / "XRayCTRegistration" / "Resources").mkdir()
    shutil.copy(ROOT / "XRayCTRegistration" / "Resources" / "requirements.txt",
                src / "XRayCTRegistration" / "Resources" / "requirements.txt")
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(out), str(src)], check=True, capture_output=True, text=True, env=clean_env())
    (path,) = out.glob("xrayctreg-*.whl")
    return path


def test_wheel_holds_every_library_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {str(p.relative_to(LIBRARY.parent)) for p in LIBRARY.rglob("*.py") if "__pycache__" not in p.parts}
    assert "XRayCTRegistrationLib/networks/regressor.py" in expected
    assert expected <= names, sorted(expected - names)
    assert not any(n.startswith(("XRayCTRegistrationSlicerLib/", "XRayCTRegistration.py")) for n in names)


def test_wheel_installs_into_a_fresh_environment(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    clean = clean_env()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, env=clean)
    python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "-q", str(wheel)], check=True, capture_output=True, text=True, env=clean)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "shared_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    code = ("import importlib, sys\n"
            f"for name in {library_modules()!r}:\n"
            "    importlib.import_module(name)\n"
            "import XRayCTRegistrationLib\n"
            "print(XRayCTRegistrationLib.__file__)\n")
    run = subprocess.run([str(python), "-c", code], capture_output=True, text=True, env=clean, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().startswith(str(env_dir)), run.stdout  # the wheel's copy, not the source tree
    cli = subprocess.run([str(env_dir / "bin" / "xrayctreg"), "--help"], capture_output=True, text=True, env=clean,
                         cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert "register" in cli.stdout and "train" in cli.stdout
