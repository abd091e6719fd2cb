"""Physics DRR: two-material analytic phantom, beam hardening, monochromatic limit, gradients, detector chain."""

import numpy as np
import pytest
import torch
from XRayCTRegistrationLib._raymarch import block_table
from XRayCTRegistrationLib.errors import InputError
from XRayCTRegistrationLib.geometry import Camera, ReferenceView
from XRayCTRegistrationLib.materials import MaterialVolumes, decompose
from XRayCTRegistrationLib.phantoms import Ellipsoid, chest_phantom
from XRayCTRegistrationLib.physics import PhysicsProjector, fit_scatter_fraction, lowpass, monochromatic_equivalent
from XRayCTRegistrationLib.projector import Projector
from XRayCTRegistrationLib.spectrum import Detector, TubeSpectrum, intensity_fine
from XRayCTRegistrationLib.volume import Volume, hu_to_mu

CAMERA = Camera(1000.0, 48, 48, 2.0, 2.0)
SHAPE = (64, 64, 64)
SPACING = (1.25, 1.25, 1.25)
# water ellipsoid (peak 1 g/cm^3) around an off-centre bone ellipsoid (peak 1.92 g/cm^3), smooth profiles
WATER = Ellipsoid((0.0, 2.0, -1.0), (34.0, 28.0, 30.0), mu0=1.0, profile="smooth")
BONE = Ellipsoid((6.0, -3.0, 4.0), (16.0, 12.0, 18.0), mu0=1.92, profile="smooth")
POSES = [(0, 0, 0, 0, 0, 0), (25, -30, 15, 4, -6, 20)]


@pytest.fixture(scope="module")
def phantom():
    vols = [e.voxelise(SHAPE, SPACING) for e in (WATER, BONE)]
    return MaterialVolumes.from_volumes(("water", "bone"), vols)


def pose(params):
    return ReferenceView.ap(np.zeros(3), CAMERA.sdd).pose(params)


@pytest.mark.parametrize("kvp", [80.0, 120.0])
@pytest.mark.parametrize("params", POSES)
def test_two_material_phantom_matches_spectral_integral(phantom, kvp, params):
    spectrum = TubeSpectrum(kvp=kvp, filtration_mm_al=3.0)
    proj = PhysicsProjector(phantom, CAMERA, spectrum=spectrum, n_samples=400)
    w = pose(params)
    names = ("water", "bone")
    exact_paths = np.stack([WATER.line_integrals(CAMERA, w), BONE.line_integrals(CAMERA, w)])
    exact = intensity_fine(exact_paths, names, spectrum, Detector())  # 1 keV grid, exact paths
    assert exact.min() < 0.15 and (exact_paths[1] > 10).sum() > 100  # the rays see both materials
    with torch.no_grad():
        paths = proj.paths(torch.as_tensor(w))  # [1, 2, R]
        got = proj.intensity(torch.as_tensor(w))[0].numpy()
        model = proj.primary(torch.as_tensor(exact_paths.reshape(1, 2, -1), dtype=torch.float32))
    # the binned spectral model on exact paths, and on the rendered paths, against the fine spectral integral
    assert np.max(np.abs(model.reshape(48, 48).numpy() / exact - 1)) < 5e-3
    fine_rendered = intensity_fine(paths[0].reshape(2, 48, 48).numpy(), names, spectrum, Detector())
    assert np.max(np.abs(got / fine_rendered - 1)) < 5e-3
    # end to end: the rendered paths add the projector's discretisation error (trilinear interpolation of
    # the voxelised profiles, largest on rays grazing an ellipsoid)
    away = np.all([np.abs(e.closest_approach(CAMERA, w) - 1) > 0.1 for e in (WATER, BONE)], axis=0)
    err = np.abs(got / exact - 1)
    assert err[away].max() < 8e-3 and err.max() < 2.5e-2


def test_beam_hardening_effective_attenuation_falls_with_thickness(phantom):
    proj = PhysicsProjector(phantom, CAMERA, spectrum=TubeSpectrum(kvp=100.0))
    for m in range(2):
        p = torch.zeros(1, 2, 50, dtype=torch.float32)
        p[0, m] = torch.linspace(1.0, 300.0, 50)
        mu_eff = -torch.log(proj.primary(p))[0] / p[0, m]  # effective mu/rho * 0.1, per (g/cm^3 * mm)
        assert torch.all(mu_eff[1:] < mu_eff[:-1])
        assert float(mu_eff[0] / mu_eff[-1]) > 1.15
    # in the image: log signal per exact water path falls with the path where no bone is crossed
    w = pose(POSES[0])
    with torch.no_grad():
        img = proj(torch.as_tensor(w)).numpy()
    pw = WATER.line_integrals(CAMERA, w)
    clear = (BONE.line_integrals(CAMERA, w) == 0) & (pw > 2)
    ratio, path = img[clear] / pw[clear], pw[clear]
    thin, thick = ratio[path < np.percentile(path, 20)].mean(), ratio[path > np.percentile(path, 80)].mean()
    assert thick < 0.97 * thin


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_monochromatic_limit_equals_drr(backend):
    ct = chest_phantom((40, 32, 36), (4.0, 4.5, 5.0), center=(3.0, -2.0, 4.0))
    mu = Volume(hu_to_mu(ct.data), ct.ijk_to_ras)
    cam = Camera(1000.0, 32, 40, 3.0, 3.0)
    w = torch.as_tensor(np.stack([ReferenceView.ap(ct.center, cam.sdd).pose(p) for p in POSES]))
    with torch.no_grad():
        mono = Projector(mu, cam, backend=backend)(w)
        phys = monochromatic_equivalent(mu, cam, backend=backend)(w)
    assert phys.shape == (2, 32, 40)
    # numba: 16-bit densities, each line integral off by at most half a step times the chord (mm)
    step = float(mu.data.max()) / 65535 if backend == "numba" else 0.0
    chord = float(np.linalg.norm(np.asarray(mu.shape_ijk) * mu.spacing))
    assert torch.allclose(phys, mono, rtol=1e-5, atol=1e-6 + 0.5 * step * chord)


def _chest_physics(backend, **kw):
    ct = chest_phantom((40, 32, 36), (4.0, 4.5, 5.0))
    cam = Camera(1000.0, 24, 28, 5.0, 5.0)
    ref = ReferenceView.ap(ct.center, cam.sdd)
    return PhysicsProjector(decompose(ct), cam, backend=backend, n_samples=96, **kw), ref


def test_pose_gradient_matches_finite_differences_on_both_backends(phantom):
    ref = ReferenceView.ap(np.zeros(3), CAMERA.sdd)
    weights = torch.rand(1, 48, 48, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    start = torch.tensor([[10.0, -20.0, 5.0, 3.0, -2.0, 15.0]], dtype=torch.float64)
    grads = {}
    for backend in ("numba", "torch"):
        proj = PhysicsProjector(phantom, CAMERA, scatter_fraction=0.3, blur_px=1.0, backend=backend, n_samples=400)
        params = start.clone().requires_grad_(True)
        (proj(ref.pose_torch(params)) * weights).sum().backward()
        grads[backend] = params.grad
    g = grads["numba"]
    assert g.abs().min() > 1e-3
    assert torch.allclose(g, grads["torch"], rtol=5e-3, atol=2e-3 * g.abs().max().item())
    proj = PhysicsProjector(phantom, CAMERA, scatter_fraction=0.3, blur_px=1.0, n_samples=400)
    h = 0.05
    fd = torch.zeros_like(start)
    with torch.no_grad():
        for i in range(6):
            e = torch.zeros_like(start)
            e[0, i] = h
            fd[0, i] = ((proj(ref.pose_torch(start + e)) * weights).sum()
                        - (proj(ref.pose_torch(start - e)) * weights).sum()) / (2 * h)
    assert torch.allclose(g, fd, rtol=0.02, atol=0.01 * g.abs().max().item())


def test_kvp_gradient_matches_finite_differences():
    proj, ref = _chest_physics("numba")
    w = torch.as_tensor(ref.world_from_camera)
    proj.kvp.requires_grad_(True)
    with torch.no_grad():
        paths = proj.paths(w)
    loss = proj.primary(paths).double().sum()
    loss.backward()
    g = float(proj.kvp.grad)
    vals = []
    for kv in (99.0, 101.0):
        proj.kvp = torch.tensor(kv, dtype=torch.float64)
        with torch.no_grad():
            vals.append(float(proj.primary(paths).double().sum()))
    fd = (vals[1] - vals[0]) / 2.0
    assert g > 0 and g == pytest.approx(fd, rel=0.05)  # a harder beam passes more photons


def test_scatter_lowers_contrast_and_lowpass_keeps_level():
    plain, ref = _chest_physics("numba")
    fog, _ = _chest_physics("numba", scatter_fraction=0.5, scatter_sigma_mm=30.0)
    w = torch.as_tensor(ref.world_from_camera)
    with torch.no_grad():
        a, b = plain(w), fog(w)
    assert float(b.max() - b.min()) < 0.9 * float(a.max() - a.min())
    x = torch.full((1, 1, 30, 40), 0.7)
    assert torch.allclose(lowpass(x, 9.0), x, atol=1e-6)
    with pytest.raises(InputError, match="scatter"):
        _chest_physics("numba", scatter_fraction=-0.1)


def test_simulated_noise_has_poisson_statistics():
    proj, ref = _chest_physics("numba")
    w = torch.as_tensor(ref.world_from_camera)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        clean = proj.intensity(torch.stack([w] * 256))
        noisy = torch.exp(-proj.simulate(torch.stack([w] * 256), photons=1e4, generator=g))
    mean, var = noisy.mean(0), noisy.var(0)
    expected = clean[0] / 1e4  # var(N / N0) = I / N0
    assert float(((mean - clean[0]).abs() / (expected / 256).sqrt()).max()) < 5.0
    assert 0.8 < float((var / expected).median()) < 1.2


def test_training_drrs_with_physics_randomisation():
    from XRayCTRegistrationLib.training_data import DRRSource, RenderSettings

    ct = chest_phantom((40, 32, 36), (4.0, 4.5, 5.0))
    cam = Camera(1000.0, 48, 48, 3.0, 3.0)
    ref = ReferenceView.ap(ct.center, cam.sdd)
    plain = DRRSource(ct, cam, ref, RenderSettings(ct_spacing_mm=5.0, detector_size=24))
    phys = DRRSource(ct, cam, ref, RenderSettings(ct_spacing_mm=5.0, detector_size=24, physics_kvp=(70.0, 130.0)))
    params = np.zeros((6, 6))
    a, b = plain.render(params), phys.render(params)
    assert a.shape == b.shape == (6, 24, 24)
    assert torch.allclose(a[0], a[1])  # same pose, same monochromatic DRR
    assert not torch.allclose(b[0], b[1], rtol=1e-3)  # same pose, another kVp and scatter
    corr = np.corrcoef(a[0].flatten().numpy(), b[0].flatten().numpy())[0, 1]
    assert corr > 0.9  # the same anatomy


def test_registration_with_physics_renderer_recovers_pose():
    from XRayCTRegistrationLib.metrics import mtre, target_points
    from XRayCTRegistrationLib.physics import physics_renderer
    from XRayCTRegistrationLib.registration import register

    ct = chest_phantom((48, 40, 40), (4.0, 4.0, 4.0))
    cam = Camera(1000.0, 48, 48, 6.0, 6.0)
    ref = ReferenceView.ap(ct.center, cam.sdd)
    gt_params = np.array([2.0, -3.0, 4.0, 5.0, -6.0, 8.0])
    gt, init = ref.pose(gt_params), ref.pose(gt_params + np.array([3.0, -2.0, 2.0, -6.0, 5.0, 4.0]))
    mats = decompose(ct)
    physics = dict(spectrum=TubeSpectrum(kvp=80.0), scatter_fraction=0.2, blur_px=1.0)
    sim = PhysicsProjector(mats, cam, **physics)
    xray = sim.simulate(torch.as_tensor(gt), photons=3e4, generator=torch.Generator().manual_seed(0)).numpy()
    volume, renderer = physics_renderer(mats, **physics)
    result = register(volume, xray, cam, init, reference=ref, renderer=renderer)
    pts = target_points(ct, 60)
    before, after = mtre(pts, gt, init), mtre(pts, gt, result.world_from_camera)
    assert before > 8.0 and after < 0.5 * before  # (single view: the depth error dominates what is left)
    assert result.similarity > result.initial_similarity


def test_packed_pairs_bound_the_quantisation_and_are_kept(phantom):
    pairs = phantom.packed_pairs()
    assert pairs is phantom.packed_pairs() and len(pairs) == 1
    packed, scales, blocks = pairs[0]
    assert np.array_equal(blocks, block_table(packed))
    for c, shift in enumerate((0, 16)):
        back = ((packed[1:-1, 1:-1, 1:-1] >> shift) & 0xFFFF) * scales[c]
        assert np.abs(back - phantom.densities[c]).max() <= 0.5 * scales[c] * (1 + 1e-6)
    assert scales[1] == pytest.approx(phantom.densities[1].max() / 65535)


def test_fast_path_equals_torch_reference_with_three_materials():
    shell = Ellipsoid((0.0, 0.0, 0.0), (12.0, 10.0, 11.0), mu0=0.3, profile="smooth")
    mats = MaterialVolumes.from_volumes(("water", "bone", "iodine"),
                                        [e.voxelise((32, 32, 32), (2.5,) * 3) for e in (WATER, BONE, shell)])
    cam = Camera(1000.0, 24, 24, 4.0, 4.0)
    ref = ReferenceView.ap(np.zeros(3), cam.sdd)
    kw = dict(spectrum=TubeSpectrum(90.0), scatter_fraction=0.2, blur_px=1.0, n_samples=160)
    out = {}
    for backend in ("numba", "torch"):  # numba: packed pairs (iodine with an empty partner), one sum
        proj = PhysicsProjector(mats, cam, backend=backend, **kw)
        params = torch.tensor([[8.0, -5.0, 3.0, 2.0, -3.0, 10.0]], dtype=torch.float64, requires_grad=True)
        img = proj(ref.pose_torch(params))
        (img * torch.linspace(0, 1, 24 * 24).reshape(1, 24, 24)).sum().backward()
        out[backend] = (img.detach(), params.grad)
    (fast, g_fast), (slow, g_slow) = out["numba"], out["torch"]
    assert slow.max() > 1.0
    assert torch.allclose(fast, slow, rtol=1e-3, atol=1e-3)
    assert torch.allclose(g_fast, g_slow, rtol=1e-2, atol=1e-2 * g_slow.abs().max().item())


def test_fitted_scatter_fraction_recovers_the_xrays_fog(phantom):
    ref = ReferenceView.ap(np.zeros(3), CAMERA.sdd)
    sim = PhysicsProjector(phantom, CAMERA, scatter_fraction=0.3, blur_px=1.0, n_samples=128)
    fit = PhysicsProjector(phantom, CAMERA, blur_px=1.0, n_samples=128)  # no scatter of its own
    truth = torch.as_tensor(ref.pose(POSES[1]))
    with torch.no_grad():
        xray = sim(truth)
    assert fit_scatter_fraction(fit, truth, xray) == pytest.approx(0.3, abs=0.01)
    off = torch.as_tensor(ref.pose(np.add(POSES[1], (2, -2, 1, 5, -4, 8))))  # a start some mm and degrees off
    assert fit_scatter_fraction(fit, off, xray) == pytest.approx(0.3, abs=0.1)
    with torch.no_grad():
        assert fit_scatter_fraction(fit, truth, fit(truth)) == pytest.approx(0.0, abs=0.01)


def test_a_scatter_fit_at_its_bound_makes_the_registration_a_failure(phantom):
    from functools import partial

    from XRayCTRegistrationLib.physics import SCATTER_FIT_MAX, physics_renderer, register_fitting_scatter
    from XRayCTRegistrationLib.pipeline import register_xray

    ref = ReferenceView.ap(np.zeros(3), CAMERA.sdd)
    sim = PhysicsProjector(phantom, CAMERA, scatter_fraction=0.3, blur_px=1.0, n_samples=128)
    fit = PhysicsProjector(phantom, CAMERA, blur_px=1.0, n_samples=128)
    carrier, renderer = physics_renderer(phantom, scatter_fraction=0.0)
    truth = ref.pose(POSES[1])
    start = ref.pose(np.add(POSES[1], (1, -1, 1, 3, -2, 4)))
    with torch.no_grad():
        xray = sim(torch.as_tensor(truth)).numpy()

    fractions = []

    def register_with(f, w):
        fractions.append(f)
        return register_xray(None, xray_used, CAMERA, w, method="opt-lncc", volume_mu=carrier, reference=ref,
                             renderer=partial(renderer, scatter_fraction=f), max_iterations=30)

    xray_used = xray  # the phantom's fogged X-ray: a fraction inside the fit's range, the registration's verdict
    out, f = register_fitting_scatter(xray_used, start, fit, register_with)
    assert f == pytest.approx(0.3, abs=0.1) and "bound" not in out.result.message
    # passes until the refitted fraction settles: at least two, at most four, the last one registered with f
    assert 2 <= len(fractions) <= 4 and fractions[-1] == f and "did not settle" not in out.result.message
    with pytest.raises(InputError, match="passes"):
        register_fitting_scatter(xray_used, start, fit, register_with, passes=5, max_passes=4)
    xray_used = xray.mean() + 0.02 * (xray - xray.mean())  # flatter than any fog of the CT makes: fit at its bound
    out, f = register_fitting_scatter(xray_used, start, fit, register_with)
    assert f == pytest.approx(SCATTER_FIT_MAX)
    assert out.result.success is False and out.result.message.startswith("the scatter fit ended at its bound")
