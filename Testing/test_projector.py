"""DRR projector: exact line integrals of analytic phantoms, backends, pose gradients, batching."""

import numpy as np
import pytest
import torch
from XRayCTRegistrationLib import _raymarch
from XRayCTRegistrationLib.errors import InputError
from XRayCTRegistrationLib.geometry import Camera, ReferenceView, euler_xyz
from XRayCTRegistrationLib.phantoms import Ellipsoid, chest_phantom
from XRayCTRegistrationLib.projector import DEFAULT_SAMPLES, Projector, add_sample_slide, render
from XRayCTRegistrationLib.volume import Volume, hu_to_mu

SHAPE = (64, 64, 64)
SPACING = (1.2, 1.4, 1.6)  # anisotropic, mm
CENTER = (6.0, -5.0, 7.0)  # ellipsoid centre, off the volume centre (world origin)
AXES = (32.0, 25.0, 21.0)
ROTATION = euler_xyz(torch.tensor([20.0, -35.0, 50.0], dtype=torch.float64)).numpy()
CAMERA = Camera(1000.0, 64, 64, 2.6, 2.6)
POSES = [  # (rx, ry, rz, tx, ty, tz): degrees, mm relative to the AP view of the volume
    (0, 0, 0, 0, 0, 0),
    (45, 30, 10, 5, -8, 30),
    (-60, 40, 0, 0, 0, -50),
    (30, -60, 20, 10, 10, 0),
    (0, 90, 0, -4, 3, 20),
]


@pytest.fixture(scope="module")
def smooth():
    e = Ellipsoid(CENTER, AXES, ROTATION, mu0=0.03, profile="smooth")
    return e, e.voxelise(SHAPE, SPACING)


@pytest.fixture(scope="module")
def uniform():
    e = Ellipsoid(CENTER, AXES, ROTATION, mu0=0.03, profile="uniform")
    return e, e.voxelise(SHAPE, SPACING, supersample=4)


def reference(vol):
    return ReferenceView.ap(vol.center, CAMERA.sdd)


def chest():
    v = chest_phantom((40, 32, 36), (4.0, 4.5, 5.0), center=(3.0, -2.0, 4.0))
    return Volume(hu_to_mu(v.data), v.ijk_to_ras)


# -- the analytic phantoms themselves ----------------------------------------------------------------
@pytest.mark.parametrize("profile, factor", [("uniform", 2.0), ("smooth", 4.0 / 3.0)])
def test_sphere_through_centre(profile, factor):
    # the central ray of the AP view crosses a sphere at the isocentre along a diameter
    cam = Camera(1000.0, 3, 3, 1.0, 1.0)
    ref = ReferenceView.ap(np.zeros(3), cam.sdd)
    e = Ellipsoid((0, 0, 0), (30, 30, 30), mu0=0.02, profile=profile)
    img = e.line_integrals(cam, ref.world_from_camera)
    assert img[1, 1] == pytest.approx(0.02 * factor * 30, rel=1e-12)


@pytest.mark.parametrize("profile", ["uniform", "smooth"])
def test_line_integrals_match_quadrature(profile):
    e = Ellipsoid(CENTER, AXES, ROTATION, mu0=0.03, profile=profile)
    cam = Camera(1000.0, 5, 7, 9.0, 7.0, x0=3.0, y0=-2.0)
    w = ReferenceView.ap(np.zeros(3), cam.sdd).pose([30, -20, 15, 4, -3, 10])
    exact = e.line_integrals(cam, w)
    t = (np.arange(400_000) + 0.5) / 400_000  # dense midpoint rule along each source-pixel segment
    dirs = cam.pixel_centers() @ w[:3, :3].T
    for r, c in [(2, 3), (1, 1), (4, 6), (0, 2)]:
        pts = w[:3, 3] + t[:, None] * dirs[r, c]
        quad = e.mu(pts).sum() * np.linalg.norm(dirs[r, c]) / t.size
        assert exact[r, c] == pytest.approx(quad, rel=1e-4, abs=1e-6)
    assert exact.max() > 0.5


def test_voxelise_partial_volume():
    e = Ellipsoid((0, 0, 0), (10, 10, 10), mu0=1.0, profile="uniform")
    vol = e.voxelise((32, 32, 32), (1.0, 1.0, 1.0), supersample=6)
    assert vol.data.sum() == pytest.approx(4 / 3 * np.pi * 1000, rel=5e-3)  # sphere volume, mm^3
    assert 0 < np.count_nonzero((vol.data > 0) & (vol.data < 1))  # partial voxels at the surface
    with pytest.raises(InputError, match="profile"):
        Ellipsoid((0, 0, 0), (1, 1, 1), profile="gaussian")


# -- accuracy against exact line integrals -----------------------------------------------------------
@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_smooth_ellipsoid_every_pixel_within_one_percent(smooth, backend):
    e, vol = smooth
    proj = Projector(vol, CAMERA, backend=backend)
    ref = reference(vol)
    for params in POSES:
        w = ref.pose(params)
        exact = e.line_integrals(CAMERA, w)
        with torch.no_grad():
            img = proj(torch.as_tensor(w)).numpy()
        assert exact.max() > 0.5 and np.count_nonzero(exact) > 400, params
        assert np.abs(img - exact).max() < 0.01 * exact.max(), params


def test_uniform_ellipsoid_away_from_silhouette(uniform):
    e, vol = uniform
    proj = Projector(vol, CAMERA)
    ref = reference(vol)
    dense = Projector(vol, CAMERA, n_samples=2048)
    # Rays at least 2.5 voxels (largest spacing) from the silhouette, measured conservatively in unit-ball
    # coordinates with the shortest semi-axis. The voxel model (partial volume, then trilinear) blurs the
    # hard edge by about one voxel; where the chord is this close to tangent its curvature makes that a
    # 1-1.1 % error at 2 voxels, 0.8 % at 2.5, whatever the sampling (checked below against 2048 samples).
    margin = 2.5 * max(SPACING) / min(AXES)
    for params in POSES:
        w = ref.pose(params)
        exact = e.line_integrals(CAMERA, w)
        with torch.no_grad():
            img = proj(torch.as_tensor(w)).numpy()
            fine = dense(torch.as_tensor(w)).numpy()
        far = np.abs(e.closest_approach(CAMERA, w) - 1) >= margin
        assert far.sum() > 0.7 * far.size and np.count_nonzero(exact[far]) > 300, params
        assert np.abs(img - exact)[far].max() < 0.01 * exact.max(), params
        assert img.sum() == pytest.approx(exact.sum(), rel=0.01), params
        assert np.abs(img - fine).max() < 1e-3 * exact.max(), params  # the default sampling has converged


def test_bead_appears_where_camera_projects_it():
    ijk_to_ras = np.diag([1.5, 1.5, 2.0, 1.0])
    ijk_to_ras[:3, 3] = (-40.0, -35.0, -30.0)
    data = np.zeros((32, 48, 48), np.float32)  # [k, j, i]
    ijk = np.array([31, 14, 20])  # off-centre voxel (i, j, k)
    data[ijk[2], ijk[1], ijk[0]] = 5.0
    vol = Volume(data, ijk_to_ras)
    bead = ijk_to_ras[:3, :3] @ ijk + ijk_to_ras[:3, 3]
    cam = Camera(1000.0, 64, 64, 1.0, 1.0)
    ref = ReferenceView.ap(vol.center, cam.sdd)
    for params in [(0, 0, 0, 0, 0, 0), (20, -30, 15, 3, -2, 40)]:
        w = ref.pose(params)
        img = render(vol, cam, w)
        row, col = cam.project(bead, w)
        assert np.unravel_index(img.argmax(), img.shape) == (round(row), round(col))
        rr, cc = np.mgrid[:64, :64]
        assert (img * rr).sum() / img.sum() == pytest.approx(row, abs=0.1)
        assert (img * cc).sum() / img.sum() == pytest.approx(col, abs=0.1)


def box_chords(vol, cam, w):
    """Length (mm) of each source-to-pixel segment inside the volume's box [-0.5, n - 0.5] (slab method)."""
    ijk_from_cam = np.linalg.inv(vol.ijk_to_ras) @ w
    d = cam.pixel_centers() @ ijk_from_cam[:3, :3].T  # [rows, cols, 3]
    o = ijk_from_cam[:3, 3]
    with np.errstate(divide="ignore"):
        t0 = (-0.5 - o) / d
        t1 = (np.array(vol.shape_ijk) - 0.5 - o) / d
    near = np.clip(np.minimum(t0, t1).max(-1), 0, 1)
    far = np.clip(np.maximum(t0, t1).min(-1), 0, 1)
    return np.maximum(far - near, 0) * np.linalg.norm(cam.pixel_centers(), axis=-1)


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_constant_volume_gives_chord_lengths(backend):
    # a constant volume is constant up to its faces (voxel boxes), so each pixel is value * chord through the box
    vol = Volume(np.full((20, 24, 28), 0.05, np.float32), np.diag([2.0, 1.5, 2.5, 1.0]))
    cam = Camera(1000.0, 32, 32, 3.0, 3.0)
    ref = ReferenceView.ap(vol.center, cam.sdd)
    proj = Projector(vol, cam, n_samples=16, backend=backend)
    for params in [(0, 0, 0, 0, 0, 0), (35, -50, 20, 3, -4, 25)]:
        w = ref.pose(params)
        with torch.no_grad():
            img = proj(torch.as_tensor(w)).numpy()
        exact = 0.05 * box_chords(vol, cam, w)
        assert exact.max() > 0.05 * 30 and np.count_nonzero(exact) > 200
        assert np.abs(img - exact).max() < 1e-5 * exact.max(), params


# -- backends ------------------------------------------------------------------------------------------
def test_backends_agree_and_batch_equals_single():
    vol = chest()
    ref = reference(vol)
    w = torch.as_tensor(np.stack([ref.pose(p) for p in POSES]))  # [5, 4, 4]
    fast = Projector(vol, CAMERA, n_samples=100, backend="numba")
    slow = Projector(vol, CAMERA, n_samples=100, backend="torch", max_samples_per_chunk=30_000)
    with torch.no_grad():
        a = fast(w)
        b = slow(w)
        singles = torch.stack([fast(w[i]) for i in range(len(w))])
    assert a.shape == (5, 64, 64) and a.dtype == torch.float32
    assert a.amax() > 1.0
    assert (a - b).abs().max() < 1e-4 * a.amax()
    assert torch.equal(a, singles)


def test_backend_choice_and_errors():
    vol = chest()
    proj = Projector(vol, CAMERA)
    assert proj.active_backend() == "numba"
    proj.mu.requires_grad_(True)
    assert proj.active_backend() == "torch"
    with pytest.raises(InputError, match="backend"):
        Projector(vol, CAMERA, backend="cuda")
    forced = Projector(vol, CAMERA, backend="numba")
    forced.mu.requires_grad_(True)
    with pytest.raises(InputError, match="volume gradient"):
        forced(torch.eye(4))
    with pytest.raises(InputError, match="n_samples"):
        Projector(vol, CAMERA, n_samples=0)
    with pytest.raises(InputError, match="world_from_camera"):
        proj(torch.eye(3))
    assert DEFAULT_SAMPLES == Projector(vol, CAMERA).n_samples


def test_volume_gradient_through_torch_backend():
    vol = chest()
    proj = Projector(vol, Camera(1000.0, 16, 16, 10.0, 10.0), n_samples=64)
    proj.mu.requires_grad_(True)
    w = torch.as_tensor(reference(vol).pose([10, 5, 0, 0, 0, 0]))
    weights = torch.rand(16, 16, generator=torch.Generator().manual_seed(0))
    loss = (proj(w) * weights).sum()
    loss.backward()
    # the DRR is linear in the volume: <grad, mu> equals the loss itself
    assert (proj.mu.grad * proj.mu).sum().item() == pytest.approx(loss.item(), rel=1e-4)


# -- pose gradients ------------------------------------------------------------------------------------
def _loss(proj, ref, params, weights):
    w = ref.pose_torch(params)  # [B, 4, 4] float64
    return (proj(w) * weights).sum()


def test_pose_gradient_matches_finite_differences_and_torch(smooth):
    _, vol = smooth
    ref = reference(vol)
    weights = torch.rand(2, 64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    start = torch.tensor([[10.0, -20.0, 5.0, 3.0, -2.0, 15.0], [-40.0, 35.0, 0.0, 0.0, 4.0, -20.0]],
                         dtype=torch.float64)
    grads = {}
    for backend in ("numba", "torch"):
        proj = Projector(vol, CAMERA, backend=backend)
        params = start.clone().requires_grad_(True)
        _loss(proj, ref, params, weights).backward()
        grads[backend] = params.grad
    g = grads["numba"]
    assert g.abs().min() > 1e-3  # every parameter moves this image
    assert torch.allclose(g, grads["torch"], rtol=2e-3, atol=1e-3 * g.abs().max().item())
    # central differences of the rendered image (entry/exit points move too; the volume is zero there)
    proj = Projector(vol, CAMERA)
    h = 0.05
    fd = torch.zeros_like(start)
    with torch.no_grad():
        for b in range(2):
            for i in range(6):
                e = torch.zeros_like(start)
                e[b, i] = h
                fd[b, i] = (_loss(proj, ref, start + e, weights) - _loss(proj, ref, start - e, weights)) / (2 * h)
    assert torch.allclose(g, fd, rtol=0.02, atol=0.01 * g.abs().max().item())


def test_pose_gradient_batched_equals_single(smooth):
    _, vol = smooth
    ref = reference(vol)
    proj = Projector(vol, CAMERA, n_samples=64)
    params = torch.tensor([POSES[1], POSES[3]], dtype=torch.float64, requires_grad=True)
    weights = torch.rand(2, 64, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    _loss(proj, ref, params, weights).backward()
    for b in range(2):
        single = params.detach()[b].clone().requires_grad_(True)
        _loss(proj, ref, single, weights[b]).backward()
        assert torch.allclose(single.grad, params.grad[b], rtol=1e-6, atol=1e-9)


def test_no_gradient_work_without_grad(smooth):
    _, vol = smooth
    proj = Projector(vol, CAMERA, n_samples=32)
    w = torch.as_tensor(reference(vol).pose(POSES[1]))
    with torch.no_grad():
        a = proj(w.clone().requires_grad_(True))
    b = proj(w.clone().requires_grad_(True))
    assert not a.requires_grad and b.requires_grad
    assert torch.allclose(a, b.detach(), rtol=1e-5, atol=1e-6)


# -- the samples' slide with entry and exit, inside the kernels ------------------------------------------
SLIDE_SHAPE_IJK = (14, 12, 10)


def slide_rays(seed=3):
    """Poses ``[B, 3, 4]`` (float64) and rays ``[R, 3]`` entering and leaving a 14 x 12 x 10 box by every face.

    Sources on a sphere of radius 30 voxels round the box centre look at it, poses 2-7 from near each of
    the six axis directions; pose 0 has its source inside the box (entry clamped to t = 0), pose 1 its pixels
    inside (exit clamped to t = 1).
    """
    rng = np.random.default_rng(seed)
    centre = (np.array(SLIDE_SHAPE_IJK) - 1) / 2
    mats = []
    for b in range(12):
        view = rng.normal(size=3)
        if 2 <= b < 8:  # looking along +-i, +-j, +-k, tilted
            view = 0.3 * view + np.eye(3)[(b - 2) // 2] * (-1) ** b
        q, _ = np.linalg.qr(np.stack([view, rng.normal(size=3), rng.normal(size=3)], 1))
        rot = q[:, [1, 2, 0]] * np.sign(q[:, 0] @ view)  # columns: the camera axes in index space, z along view
        scale = 60.0 if b != 1 else 28.0
        source = centre - 30.0 * rot[:, 2] if b != 0 else centre + np.array([1.3, -0.7, 0.4])
        mats.append(np.concatenate([rot * scale, source[:, None]], 1))
    dirs = np.concatenate([rng.uniform(-0.35, 0.35, (200, 2)), np.ones((200, 1))], 1)
    return np.ascontiguousarray(np.stack(mats)), dirs


def face_axes(m, dirs, shape_ijk):
    """Entry and exit axes ``[B, R]`` (-1 where that end is inside the box or the ray misses) and signs."""
    d = np.einsum("bij,rj->bri", m[:, :, :3], dirs)
    o = m[:, None, :, 3]
    n = np.array(shape_ijk, float)
    ta, tb = (-0.5 - o) / d, (n - 0.5 - o) / d
    t_in, t_out = np.minimum(ta, tb), np.maximum(ta, tb)
    hit = t_in.max(-1) < t_out.min(-1)
    a_in = np.where(hit & (t_in.max(-1) > 0), t_in.argmax(-1), -1)
    a_out = np.where(hit & (t_out.min(-1) < 1) & (t_out.min(-1) > 0), t_out.argmin(-1), -1)
    sign = np.sign(d)
    return a_in, a_out, sign


def slide_volume(channels=1):
    """A random positive volume ``[C, K, J, I]`` (tissue up to every face, so the slide matters)."""
    rng = np.random.default_rng(11)
    return (0.01 + 0.05 * rng.random((channels, *SLIDE_SHAPE_IJK[::-1]))).astype(np.float32)


def test_slide_rays_cover_every_face():
    m, dirs = slide_rays()
    a_in, a_out, sign = face_axes(m, dirs, SLIDE_SHAPE_IJK)
    b, r = np.nonzero(a_in >= 0)
    entered = {(a, s) for a, s in zip(a_in[b, r], sign[b, r, a_in[b, r]] > 0, strict=True)}
    b, r = np.nonzero(a_out >= 0)
    left = {(a, s) for a, s in zip(a_out[b, r], sign[b, r, a_out[b, r]] > 0, strict=True)}
    every = {(a, s) for a in range(3) for s in (False, True)}
    assert entered == every and left == every
    assert (a_in[0] == -1).all() and (a_out[0] >= 0).any()  # source inside: no entry face
    assert (a_out[1] == -1).any() and (a_in[1] >= 0).any()  # pixels inside: no exit face


@pytest.mark.parametrize("n_samples", [7, 37])
def test_kernel_slide_equals_float64_reference(n_samples):
    m, dirs = slide_rays()
    vol = _raymarch.pad_volume(slide_volume()[0])
    blocks = _raymarch.block_table(vol)
    out = np.empty((m.shape[0], dirs.shape[0]), np.float32)
    fixed = np.empty((*out.shape, 6), np.float32)
    _raymarch.march_with_jacobian(vol, blocks, m, dirs, n_samples, out, fixed, False)
    fused, out2 = np.empty_like(fixed), np.empty_like(out)
    _raymarch.march_with_jacobian(vol, blocks, m, dirs, n_samples, out2, fused)
    ref = add_sample_slide(torch.from_numpy(fixed), torch.from_numpy(out), torch.from_numpy(m),
                           torch.from_numpy(dirs), torch.tensor(SLIDE_SHAPE_IJK, dtype=torch.float64)).numpy()
    assert np.array_equal(out, out2) and np.count_nonzero(out) > 0.5 * out.size
    assert np.abs(ref - fixed).max() > 0.1 * np.abs(ref).max()  # the slide is a large part of the gradient
    assert np.abs(fused - ref).max() < 1e-6 * np.abs(ref).max()
    # source inside (pose 0): the entry does not move; a ray leaving by a face moves only along that face's axis
    a_in, a_out, _ = face_axes(m, dirs, SLIDE_SHAPE_IJK)
    r = np.nonzero(a_out[0] >= 0)[0]
    other = np.ones((r.size, 3), bool)
    other[np.arange(r.size), a_out[0, r]] = False
    assert np.allclose(fused[0, r, :3][other], fixed[0, r, :3][other], rtol=1e-5, atol=1e-7)


def test_pose_jacobian_equals_the_autograd_gradient():
    # both take the samples' slide from the kernel once (tissue up to every face, so the slide matters)
    vol = Volume(slide_volume()[0], np.diag([4.0, 5.0, 6.0, 1.0]))
    cam = Camera(1000.0, 24, 20, 4.0, 4.0)
    proj = Projector(vol, cam, n_samples=48, backend="numba")
    w = torch.as_tensor(ReferenceView.ap(vol.center, cam.sdd).pose(POSES[1]))[None]
    weights = torch.rand(1, 24, 20, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    img, jac = proj.pose_jacobian(w)
    wg = w.clone().requires_grad_(True)
    (proj(wg) * weights).sum().backward()
    from_jac = torch.einsum("brc,brcpm->bpm", weights, jac)
    assert wg.grad.abs().max() > 0
    assert torch.allclose(from_jac, wg.grad, rtol=1e-6, atol=1e-9 * wg.grad.abs().max().item())
