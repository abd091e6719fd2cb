"""Triton projector backend against the numba kernels and exact line integrals.

Without a GPU the kernels run under Triton's interpreter: conftest.py sets ``TRITON_INTERPRET=1`` at the
start of the session (Triton reads it when it is imported and when it compiles a function, so it cannot be
set for this module alone). Nothing else runs Triton on the CPU, so the other tests are not affected.
Volumes and detectors are tiny to keep the interpreter fast.
"""

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

if importlib.util.find_spec("triton") is None:
    pytest.skip("the triton backend is optional (pip install triton)", allow_module_level=True)
# Without a GPU, conftest.py sets TRITON_INTERPRET=1 for the whole session, before anything imports triton.
from test_projector import SLIDE_SHAPE_IJK, box_chords, slide_rays, slide_volume  # noqa: E402
from XRayCTRegistrationLib import _raymarch, projector  # noqa: E402
from XRayCTRegistrationLib import _raymarch_triton as T  # noqa: E402
from XRayCTRegistrationLib.errors import InputError  # noqa: E402
from XRayCTRegistrationLib.geometry import Camera, ReferenceView, euler_xyz  # noqa: E402
from XRayCTRegistrationLib.phantoms import Ellipsoid, chest_phantom  # noqa: E402
from XRayCTRegistrationLib.projector import Projector, add_sample_slide  # noqa: E402
from XRayCTRegistrationLib.volume import Volume, hu_to_mu  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Samples per ray: odd, with even volume sizes, so that a ray crossing the volume from face to face along an
# axis never samples a voxel plane of that axis (where the interpolant has kinks and gradients are one-sided).
N = 37
CAMERA = Camera(1000.0, 16, 16, 11.3, 10.7, x0=2.3, y0=-1.7)
POSES = [  # degrees, mm; generic angles so that no ray runs along a voxel plane (where gradients are one-sided)
    (0.3, 0.7, 0.2, 0.1, 0.2, 0.3),
    (31.3, -42.1, 11.7, 5.3, -3.1, 21.7),
    (-58.9, 37.3, 3.1, 1.3, 2.1, -30.9),
    (12.9, 88.1, -7.3, -2.9, 3.7, 9.1),
]


def chest():
    v = chest_phantom((16, 14, 12), (9.0, 10.0, 11.0), center=(3.0, -2.0, 4.0))
    return Volume(hu_to_mu(v.data), v.ijk_to_ras)


def test_kernels_loaded_where_they_can_run():
    assert T.INTERPRETED or torch.cuda.is_available()
    assert projector.triton_kernels() is T


def numba_reference(vol, cam, w, n_samples):
    """Images [B, R] and Jacobians [B, R, 6] (the samples' slide included) of the numba kernel."""
    m = np.ascontiguousarray((vol.ras_to_ijk @ w)[:, :3])
    dirs = cam.pixel_centers(np.float64).reshape(-1, 3)
    out = np.empty((len(w), dirs.shape[0]), np.float32)
    jac = np.empty((len(w), dirs.shape[0], 6), np.float32)
    padded = _raymarch.pad_volume(vol.data)
    _raymarch.march_with_jacobian(padded, _raymarch.block_table(padded), m, dirs, n_samples, out, jac)
    return out, jac, m


def test_images_and_jacobians_match_numba():
    vol = chest()
    ref = ReferenceView.ap(vol.center, CAMERA.sdd)
    w = np.stack([ref.pose(p) for p in POSES])
    out, jac, m = numba_reference(vol, CAMERA, w, N)
    dirs = torch.as_tensor(CAMERA.pixel_centers(np.float32).reshape(-1, 3), device=DEVICE)
    mu = torch.as_tensor(vol.data, device=DEVICE)
    img, jt = T.march(mu, torch.as_tensor(m, dtype=torch.float32, device=DEVICE), dirs, N, with_jacobian=True)
    img, jt = img.cpu().numpy(), jt.cpu().numpy()
    assert out.max() > 1.0 and np.count_nonzero(out) > 0.5 * out.size
    assert np.abs(img - out).max() < 1e-5 * out.max()
    assert np.abs(jt - jac).max() < 1e-4 * np.abs(jac).max()
    # a half-precision volume gives the image of its float32 copy
    m1 = torch.as_tensor(m[1:2], dtype=torch.float32, device=DEVICE)
    half, _ = T.march(mu.half(), m1, dirs, N)
    back, _ = T.march(mu.half().float(), m1, dirs, N)
    assert torch.allclose(half, back, rtol=1e-5, atol=1e-6)


def test_pixel_tiles_and_split_samples_match_numba():
    # a detector whose width is not a multiple of the tile width; samples summed in 3 interleaved parts
    vol = chest()
    cam = Camera(1000.0, 13, 21, 11.3, 10.7, x0=2.3, y0=-1.7)
    ref = ReferenceView.ap(vol.center, cam.sdd)
    w = np.stack([ref.pose(p) for p in POSES[:3]])
    out, jac, m = numba_reference(vol, cam, w, N)
    dirs = torch.as_tensor(cam.pixel_centers(np.float32).reshape(-1, 3), device=DEVICE)
    mu = torch.as_tensor(vol.data, device=DEVICE)
    m = torch.as_tensor(m, dtype=torch.float32, device=DEVICE)
    for width, split, order in [(cam.cols, 1, True), (cam.cols, 3, True), (0, 2, True), (cam.cols, 2, False)]:
        img, jt = T.march(mu, m, dirs, N, with_jacobian=True, width=width, split=split, pose_fastest=order)
        img, jt = img.cpu().numpy(), jt.cpu().numpy()
        assert np.abs(img - out).max() < 1e-5 * out.max(), (width, split)
        assert np.abs(jt - jac).max() < 1e-4 * np.abs(jac).max(), (width, split)
    # a pose whose rays all miss the volume renders zeros (tiles with no ray in the box do no samples)
    away = torch.as_tensor(np.array([[[1.0, 0, 0, 1e4], [0, 1.0, 0, 1e4], [0, 0, 1.0, 1e4]]]), dtype=torch.float32,
                           device=DEVICE)
    img, jt = T.march(mu, away, dirs, N, with_jacobian=True, width=cam.cols, split=2)
    assert not img.any() and not jt.any()


@pytest.mark.parametrize("split", [1, 3])
def test_kernel_slide_equals_float64_reference(split):
    # rays entering and leaving by every face, a source inside and pixels inside the box; two channels;
    # the slide is added in the march kernel (split 1) or after the parts are summed (split 3)
    m64, dirs64 = slide_rays()
    m = torch.as_tensor(m64, dtype=torch.float32, device=DEVICE)
    dirs = torch.as_tensor(dirs64, dtype=torch.float32, device=DEVICE)
    mu = torch.as_tensor(slide_volume(2), device=DEVICE)  # [2, K, J, I]
    img, fixed = T.march(mu, m, dirs, N, with_jacobian=True, split=split, slide=False)
    img2, fused = T.march(mu, m, dirs, N, with_jacobian=True, split=split)
    assert fused.shape == (m.shape[0], 2, dirs.shape[0], 6) and torch.equal(img, img2)
    ref = add_sample_slide(fixed.cpu().double(), img.cpu(), m.cpu().double(), dirs.cpu().double(),
                           torch.tensor(SLIDE_SHAPE_IJK, dtype=torch.float64))
    scale = ref.abs().max().item()
    assert (ref - fixed.cpu()).abs().max() > 0.1 * scale
    assert (fused.cpu().double() - ref).abs().max() < 1e-4 * scale
    # and the numba kernel's fused Jacobians, channel by channel, at the same (float32) poses and rays
    for c in range(2):
        out = np.empty((m.shape[0], dirs.shape[0]), np.float32)
        jac = np.empty((*out.shape, 6), np.float32)
        padded = _raymarch.pad_volume(mu[c].cpu().numpy())
        _raymarch.march_with_jacobian(padded, _raymarch.block_table(padded), m.cpu().double().numpy(),
                                      dirs.cpu().double().numpy(), N, out, jac)
        assert np.abs(fused[:, c].cpu().numpy() - jac).max() < 1e-4 * scale


def test_constant_volume_gives_exact_chord_lengths():
    vol = Volume(np.full((10, 12, 14), 0.05, np.float32), np.diag([8.0, 7.0, 9.0, 1.0]))
    ref = ReferenceView.ap(vol.center, CAMERA.sdd)
    proj = Projector(vol, CAMERA, n_samples=8, device=DEVICE, backend="triton")
    for params in POSES[:2]:
        w = ref.pose(params)
        with torch.no_grad():
            img = proj(torch.as_tensor(w)).cpu().numpy()
        exact = 0.05 * box_chords(vol, CAMERA, w)
        assert exact.max() > 0.05 * 30 and np.count_nonzero(exact) > 100
        assert np.abs(img - exact).max() < 1e-5 * exact.max(), params


def test_smooth_ellipsoid_matches_exact_line_integrals():
    rot = euler_xyz(torch.tensor([20.0, -35.0, 50.0], dtype=torch.float64)).numpy()
    e = Ellipsoid((1.0, -1.0, 0.5), (40.0, 34.0, 30.0), rot, mu0=0.03, profile="smooth")
    vol = e.voxelise((24, 24, 24), (4.0, 4.2, 4.4))
    ref = ReferenceView.ap(vol.center, CAMERA.sdd)
    proj = Projector(vol, CAMERA, n_samples=N, device=DEVICE, backend="triton")
    w = np.stack([ref.pose(p) for p in POSES[1:3]])
    with torch.no_grad():
        img = proj(torch.as_tensor(w)).cpu().numpy()
        ref_img = Projector(vol, CAMERA, n_samples=N, backend="numba")(torch.as_tensor(w)).numpy()
    exact = np.stack([e.line_integrals(CAMERA, x) for x in w])
    assert exact.max() > 1.0 and np.count_nonzero(exact) > 0.15 * exact.size
    # 20 voxels across and 37 samples: within 2 % of the exact integral, with the error of the numba kernel
    assert np.abs(img - exact).max() < 0.02 * exact.max()
    assert np.abs(img - ref_img).max() < 1e-5 * exact.max()


def test_pose_gradient_matches_numba_backend():
    vol = chest()
    ref = ReferenceView.ap(vol.center, CAMERA.sdd)
    weights = torch.rand(len(POSES), 16, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    grads, images = {}, {}
    for backend, device in (("numba", "cpu"), ("triton", DEVICE)):
        proj = Projector(vol, CAMERA, n_samples=N, device=device, backend=backend)
        params = torch.tensor(POSES, dtype=torch.float64, requires_grad=True)
        img = proj(ref.pose_torch(params))
        (img.cpu().double() * weights).sum().backward()
        grads[backend], images[backend] = params.grad, img.detach().cpu()
    g = grads["numba"]
    assert (g.abs() > 1e-2 * g.abs().max()).sum() >= 20  # (nearly) every parameter moves the image
    assert torch.allclose(grads["triton"], g, rtol=1e-3, atol=1e-4 * g.abs().max().item())
    assert torch.allclose(images["triton"], images["numba"], rtol=0, atol=1e-5 * images["numba"].max().item())


def test_volume_gradient_matches_torch_backend():
    vol = chest()
    ref = ReferenceView.ap(vol.center, CAMERA.sdd)
    w = torch.as_tensor(np.stack([ref.pose(p) for p in POSES[1:3]]))
    weights = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(4))
    grads = {}
    for backend in ("torch", "triton"):
        proj = Projector(vol, CAMERA, n_samples=32, device=DEVICE, backend=backend)
        proj.mu.requires_grad_(True)
        loss = (proj(w).cpu() * weights).sum()
        loss.backward()
        grads[backend] = proj.mu.grad[0, 0].cpu()
        # the DRR is linear in the volume: <grad, mu> equals the loss itself
        assert (proj.mu.grad * proj.mu).sum().item() == pytest.approx(loss.item(), rel=1e-4)
    g = grads["torch"]
    assert g.abs().max() > 0 and torch.count_nonzero(g) > 0.3 * g.numel()
    assert torch.allclose(grads["triton"], g, rtol=0, atol=1e-4 * g.abs().max().item())


def test_channels_render_in_one_pass_as_separately():
    vol = chest()
    ref = ReferenceView.ap(vol.center, CAMERA.sdd)
    m = torch.as_tensor((vol.ras_to_ijk @ ref.pose(POSES[1]))[None, :3], dtype=torch.float32, device=DEVICE)
    dirs = torch.as_tensor(CAMERA.pixel_centers(np.float32).reshape(-1, 3), device=DEVICE)
    mu = torch.as_tensor(vol.data, device=DEVICE)
    channels = torch.stack([(mu > 0.02) * mu, mu.flip(0)])  # [2, K, J, I]: e.g. materials or structures
    params = torch.zeros_like(m, requires_grad=True)
    weights = torch.rand(1, 2, dirs.shape[0], generator=torch.Generator().manual_seed(5)).to(DEVICE)
    img = T.TritonMarch.apply(channels, m + params, dirs, N)  # [1, 2, R]
    (img * weights).sum().backward()
    assert img.shape == (1, 2, dirs.shape[0])
    grad = torch.zeros_like(m)
    for c in range(2):
        p = torch.zeros_like(m, requires_grad=True)
        single = T.TritonMarch.apply(channels[c], m + p, dirs, N)  # [1, R]
        (single * weights[:, c]).sum().backward()
        assert torch.equal(img[:, c].detach(), single.detach())
        grad += p.grad
    assert grad.abs().max() > 0.1
    # rtol 1e-4: the samples' slide (in the kernel, float32) subtracts terms of the float32 Jacobians
    assert torch.allclose(params.grad, grad, rtol=1e-4, atol=1e-6 * grad.abs().max().item())
    # the volume gradient of each channel is that channel's own
    vg = T.volume_gradient(tuple(channels.shape), m, dirs, N, weights)
    assert vg[1].abs().max() > 0
    assert torch.allclose(vg[1], T.volume_gradient(tuple(mu.shape), m, dirs, N, weights[:, 1]))


def test_half_precision_volume():
    vol = chest()
    ref = ReferenceView.ap(vol.center, CAMERA.sdd)
    w = torch.as_tensor(ref.pose(POSES[1]))
    half = Projector(vol, CAMERA, n_samples=N, device=DEVICE, volume_dtype=torch.float16)
    assert half.active_backend() == "triton" and half.mu.dtype == torch.float16
    rounded = Volume(vol.data.astype(np.float16).astype(np.float32), vol.ijk_to_ras)
    with torch.no_grad():
        img = half(w).cpu()
        exact = Projector(rounded, CAMERA, n_samples=N, backend="numba")(w)
        full = Projector(vol, CAMERA, n_samples=N, backend="numba")(w)
    assert img.dtype == torch.float32
    assert (img - exact).abs().max() < 1e-5 * exact.max()  # float16 storage, float32 arithmetic
    assert (img - full).abs().max() < 1e-3 * full.max()
    for backend in ("numba", "torch"):
        with pytest.raises(InputError, match="volume_dtype"):
            Projector(vol, CAMERA, backend=backend, volume_dtype=torch.float16)
    with pytest.raises(InputError, match="volume_dtype"):
        Projector(vol, CAMERA, volume_dtype=torch.float64)


def test_backend_choice_and_errors(monkeypatch):
    vol = chest()
    assert Projector(vol, CAMERA).active_backend() == "numba"  # the CPU default is unchanged
    if not torch.cuda.is_available():
        monkeypatch.setattr(T, "INTERPRETED", False)
        with pytest.raises(InputError, match="'triton' runs on CUDA"):
            Projector(vol, CAMERA, backend="triton")
        monkeypatch.setattr(projector, "_TRITON", [None])
        with pytest.raises(InputError, match="needs the triton package"):
            Projector(vol, CAMERA, backend="triton")
        proj = Projector(vol, CAMERA, backend="auto")
        proj.mu.requires_grad_(True)
        assert proj.active_backend() == "torch"
    else:
        assert Projector(vol, CAMERA, device="cuda").active_backend() == "triton"


COMPILE_SCRIPT = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from XRayCTRegistrationLib import _raymarch_triton as T

assert not T.INTERPRETED
target = GPUTarget("cuda", 90, 32)  # an H100
march = {"vol_ptr": "*fp16", "sc": "i32", "sk": "i32", "sj": "i32", "si": "i32", "ni": "i32", "nj": "i32", "nk": "i32",
         "mat_ptr": "*fp32", "dirs_ptr": "*fp32", "n_rays": "i32", "n_samples": "i32", "out_ptr": "*fp32",
         "jac_ptr": "*fp32", "width": "i32", "n_poses": "i32", "WITH_JAC": "constexpr", "BLOCK": "constexpr",
         "TW": "constexpr", "SPLIT": "constexpr", "POSE_FASTEST": "constexpr", "SLIDE": "constexpr"}
parts = {"out_ptr": "*fp32", "jac_ptr": "*fp32", "mat_ptr": "*fp32", "dirs_ptr": "*fp32", "ni": "i32", "nj": "i32",
         "nk": "i32", "n_rays": "i32", "n_poses": "i32", "n_channels": "i32", "sum_ptr": "*fp32",
         "jac_sum_ptr": "*fp32", "SPLIT": "constexpr", "WITH_JAC": "constexpr", "SLIDE": "constexpr",
         "BLOCK": "constexpr"}
grad = {"grad_ptr": "*fp32", "ni": "i32", "nj": "i32", "nk": "i32", "mat_ptr": "*fp32", "dirs_ptr": "*fp32",
        "n_rays": "i32", "n_samples": "i32", "gout_ptr": "*fp32", "BLOCK": "constexpr"}
for fn, sig, consts in [(T._march_kernel, march, {"WITH_JAC": True, "BLOCK": 128, "TW": 16, "SPLIT": 4,
                                                         "POSE_FASTEST": True, "SLIDE": True}),
                        (T._march_kernel, march, {"WITH_JAC": True, "BLOCK": 128, "TW": 16, "SPLIT": 1,
                                                         "POSE_FASTEST": True, "SLIDE": True}),
                        (T._march_kernel, march, {"WITH_JAC": False, "BLOCK": 128, "TW": 0, "SPLIT": 1,
                                                         "POSE_FASTEST": False, "SLIDE": True}),
                        (T._sum_parts_kernel, parts, {"SPLIT": 4, "WITH_JAC": True, "SLIDE": True, "BLOCK": 128}),
                        (T._volume_grad_kernel, grad, {"BLOCK": 128})]:
    kernel = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=target)
    assert ".entry" in kernel.asm["ptx"] and len(kernel.asm["cubin"]) > 1000
print("compiled")
"""


def test_kernels_compile_for_a_cuda_gpu(tmp_path):
    # the interpreter does not run Triton's compiler: compile for an H100 (PTX and cubin need no GPU)
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile now, not from an earlier run's cache
    env["PYTHONPATH"] = os.pathsep.join([str(Path(T.__file__).parents[1]), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-3000:]
