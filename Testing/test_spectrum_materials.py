"""Spectra, attenuation data, energy bins and the material decomposition of a CT."""

import numpy as np
import pytest
import torch
from XRayCTRegistrationLib.errors import InputError
from XRayCTRegistrationLib.materials import (
    MaterialVolumes,
    decompose,
    density_from_hu,
    from_labels,
    material_weights,
)
from XRayCTRegistrationLib.spectrum import (
    Detector,
    TubeSpectrum,
    bin_table,
    detected_weights,
    energy_bins,
    intensity_fine,
    mass_attenuation,
)
from XRayCTRegistrationLib.volume import Volume


def test_mass_attenuation_matches_reference_values():
    # NIST XCOM, total with coherent: water 0.2059 cm^2/g at 60 keV, 0.1707 at 100 keV; Al 0.2778 at 60 keV
    assert mass_attenuation("water", [60.0])[0] == pytest.approx(0.2059, rel=0.02)
    assert mass_attenuation("water", [100.0])[0] == pytest.approx(0.1707, rel=0.02)
    assert mass_attenuation("aluminium", [60.0])[0] == pytest.approx(0.2778, rel=0.02)
    # bone (calcium) attenuates far more per gram than soft tissue at low energy, about the same at high
    e = np.array([30.0, 150.0])
    ratio = mass_attenuation("bone", e) / mass_attenuation("soft tissue", e)
    assert ratio[0] > 2.5 and 0.9 < ratio[1] < 1.1
    with pytest.raises(InputError, match="unknown 'unobtainium'"):
        mass_attenuation("unobtainium", [60.0])


def test_tube_spectrum_shape_and_filtration_hardens():
    s = TubeSpectrum(kvp=100.0, filtration_mm_al=2.5)
    e = s.energies()
    assert e.min() >= 10.0 and e.max() < 100.0
    f = s.fluence(e).numpy()
    assert np.all(f >= 0) and f[-1] < 0.02 * f.max()

    def mean_energy(filt):
        t = TubeSpectrum(kvp=100.0, filtration_mm_al=filt)
        w = t.fluence(e).numpy()
        return float((w * e).sum() / w.sum())

    assert mean_energy(1.0) < mean_energy(5.0) < mean_energy(10.0)
    with pytest.raises(InputError, match="kvp"):
        TubeSpectrum(kvp=500.0)


def test_kvp_gradient_raises_mean_energy():
    s = TubeSpectrum(kvp=80.0)
    kvp = torch.tensor(80.0, dtype=torch.float64, requires_grad=True)
    e, w = detected_weights(s, Detector(), kvp)
    mean = (w * torch.as_tensor(e)).sum()
    mean.backward()
    assert kvp.grad is not None and float(kvp.grad) > 0


def test_detector_efficiency_bounded():
    e = np.linspace(15.0, 140.0, 50)
    counting = Detector(energy_integrating=False).efficiency(e)
    assert np.all((counting > 0) & (counting <= 1))
    assert np.allclose(Detector().efficiency(e), counting * e)
    # a thicker scintillator absorbs more
    assert np.all(Detector(thickness_mm=1.0, energy_integrating=False).efficiency(e) >= counting)


@pytest.mark.parametrize("kvp,n_bins", [(60.0, 28), (80.0, 20), (120.0, 20)])
def test_binned_intensity_close_to_fine_grid(kvp, n_bins):
    s, d = TubeSpectrum(kvp=kvp), Detector()
    mats = ("soft tissue", "bone")
    e, w = detected_weights(s, d)
    mu = torch.as_tensor(np.stack([mass_attenuation(m, e) for m in mats]))
    bins = energy_bins(w.numpy(), n_bins)
    assert np.all(np.diff(bins) >= 0) and set(bins.tolist()) == set(range(n_bins))
    wb, mb = bin_table(w, mu, torch.as_tensor(bins), n_bins)
    assert float(wb.sum()) == pytest.approx(1.0)
    pw, pb = np.meshgrid(np.linspace(0, 300, 7), np.linspace(0, 1.92 * 30, 6), indexing="ij")
    paths = np.stack([pw, pb])
    ref = intensity_fine(paths, mats, s, d)
    binned = np.tensordot(wb.numpy(), np.exp(-np.tensordot(mb.numpy(), paths, axes=([0], [0])) * 0.1), axes=1)
    assert np.max(np.abs(binned / ref - 1)) < 5e-3


def test_density_and_material_weights():
    hu = np.array([-1000.0, -500.0, 0.0, 100.0, 350.0, 1500.0, 3000.0])
    rho = density_from_hu(hu)
    assert rho[0] == pytest.approx(0.0) and rho[2] == pytest.approx(1.0) and rho[5] == pytest.approx(1.919, abs=1e-3)
    assert np.all(np.diff(rho) > 0)
    w = material_weights(hu)
    assert w.shape == (2, 7) and np.allclose(w.sum(0), 1.0)
    assert w[0, 2] > 0.99 and w[1, 5] > 0.99 and w[1, 4] == pytest.approx(0.5)
    # three materials: metal above 2500 HU
    w3 = material_weights(hu, (("soft tissue", -np.inf), ("bone", 350.0), ("titanium", 2500.0)))
    assert np.allclose(w3.sum(0), 1.0) and w3[2, -1] > 0.99 and w3[1, 5] > 0.99
    with pytest.raises(InputError, match="increasing"):
        material_weights(hu, (("soft tissue", -np.inf), ("bone", 350.0), ("titanium", 200.0)))


def test_decompose_and_labels():
    hu = np.full((4, 5, 6), -1000.0, dtype=np.float32)
    hu[1:3, 1:4, 1:5] = 40.0
    hu[2, 2, 2:4] = 1200.0
    ct = Volume(hu, np.diag([2.0, 2.0, 3.0, 1.0]))
    mv = decompose(ct)
    assert mv.names == ("soft tissue", "bone") and mv.densities.shape == (2, 4, 5, 6)
    assert np.allclose(mv.densities.sum(0), density_from_hu(hu), atol=1e-6)
    assert mv.densities[1, 2, 2, 2] > 1.7 and mv.densities[1, 1, 1, 1] < 5e-3
    labels = Volume((hu > 500).astype(np.float32) * 2 + ((hu > -500) & (hu <= 500)), ct.ijk_to_ras)
    lv = from_labels(ct, labels, {1: "soft tissue", 2: "bone"}, nominal_density=True)
    assert lv.densities[1].max() == pytest.approx(1.92) and lv.densities[0, 1, 1, 1] == pytest.approx(1.06)
    assert lv.densities[:, 0, 0, 0].sum() == 0
    with pytest.raises(InputError, match="densities"):
        MaterialVolumes(("bone",), mv.densities, ct.ijk_to_ras)
