"""Empty-space skipping of the numba ray march: exact against the march that reads every sample."""

import numpy as np
import pytest
from XRayCTRegistrationLib import _raymarch

BLOCK = _raymarch.BLOCK
SHAPE_KJI = (26, 34, 30)  # a few blocks along each axis, not multiples of the block edge


def sparse_volume() -> np.ndarray:
    """Zeros with a ball and single voxels on both sides of block edges (unpadded ``[K, J, I]``, 1/mm)."""
    k, j, i = np.indices(SHAPE_KJI)
    vol = np.where((k - 13) ** 2 + (j - 14) ** 2 + (i - 9) ** 2 <= 16, 0.03, 0.0).astype(np.float32)
    # padded index = unpadded + 1, so unpadded BLOCK - 1 and BLOCK sit on either side of a block edge
    for kk, jj, ii in [(BLOCK - 1, 3, 25), (20, BLOCK, BLOCK - 1), (2 * BLOCK, 2 * BLOCK - 1, 2 * BLOCK),
                       (0, 0, 0), (SHAPE_KJI[0] - 1, SHAPE_KJI[1] - 1, SHAPE_KJI[2] - 1)]:
        vol[kk, jj, ii] = 0.05
    return vol


def full_table(padded: np.ndarray) -> np.ndarray:
    """A block table that marks every block non-empty: the march then reads every sample."""
    return _raymarch.block_table(np.ones_like(padded))


def rays(seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Poses ``[B, 3, 4]`` and rays ``[R, 3]``: oblique views, and axis-aligned rays along block edges.

    Poses 0-2 look along i, j and k with ``A`` the identity (a ray's index-space path is its direction) from a
    source 50 voxels away; their rays pass at and next to the block edges (padded coordinate ``8 n``, i.e.
    unpadded ``8 n - 1``, and half a voxel either side). Poses 3-7 are random oblique views.
    """
    rng = np.random.default_rng(seed)
    n_k, n_j, n_i = SHAPE_KJI
    centre = (np.array([n_i, n_j, n_k]) - 1) / 2
    edges = np.array([BLOCK * n - 1 + off for n in (1, 2, 3) for off in (-0.5, -1e-7, 0.0, 1e-7, 0.5)])
    cross = np.stack(np.meshgrid(edges, edges), -1).reshape(-1, 2)  # [E, 2] offsets across the ray
    mats, dirs = [], []
    for axis in range(3):
        m = np.zeros((3, 4))
        m[:, :3] = np.eye(3)
        m[:, 3] = centre
        m[axis, 3] = -50.0
        mats.append(m)
    # one set of directions for all poses: each axis-aligned pose sees its own targets along its axis
    for axis in range(3):
        others = [a for a in range(3) if a != axis]
        d = np.zeros((cross.shape[0], 3))
        d[:, axis] = 100.0 + SHAPE_KJI[::-1][axis]
        d[:, others] = cross - centre[others]
        dirs.append(d)
    for _ in range(5):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        mats.append(np.concatenate([q * 60.0, (centre - 40.0 * q[:, 2])[:, None]], 1))
    dirs.append(np.concatenate([rng.uniform(-0.4, 0.4, (300, 2)), np.ones((300, 1))], 1))
    return np.ascontiguousarray(np.stack(mats)), np.ascontiguousarray(np.concatenate(dirs))


def test_block_table_matches_brute_force():
    padded = _raymarch.pad_volume(sparse_volume())
    table = _raymarch.block_table(padded)
    occupied = np.diff(np.diff(np.diff(table, axis=0), axis=1), axis=2)  # the flags back from the prefix sums
    assert set(np.unique(occupied)) <= {0, 1}
    nk, nj, ni = (s - 2 for s in padded.shape)  # cell corners run 0 .. n (padded index)
    assert occupied.shape == tuple(-(-(n + 1) // BLOCK) for n in (nk, nj, ni))
    for b in np.ndindex(*occupied.shape):
        lo = [x * BLOCK for x in b]
        # the cells with corners in the block read voxels up to one past its last corner
        hi = [min((x + 1) * BLOCK, n + 1) + 1 for x, n in zip(b, (nk, nj, ni), strict=True)]
        expect = bool(np.any(padded[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] != 0))
        assert occupied[b] == expect, b
    assert 0 < occupied.mean() < 0.8  # some blocks are empty, some are not


def test_nan_voxel_is_not_empty():
    vol = np.zeros((9, 9, 9), np.float32)
    vol[4, 4, 4] = np.nan
    assert _raymarch.block_table(_raymarch.pad_volume(vol))[-1, -1, -1] > 0


@pytest.mark.parametrize("n_samples", [13, 64, 200])
def test_skipping_gives_the_plain_march(n_samples):
    padded = _raymarch.pad_volume(sparse_volume())
    m, dirs = rays()
    table, full = _raymarch.block_table(padded), full_table(padded)
    shape = (m.shape[0], dirs.shape[0])
    out_skip, out_all = np.empty(shape, np.float32), np.empty(shape, np.float32)
    _raymarch.march(padded, table, m, dirs, n_samples, out_skip)
    _raymarch.march(padded, full, m, dirs, n_samples, out_all)
    scale = out_all.max()
    assert scale > 0 and np.count_nonzero(out_all) > 0.05 * out_all.size
    assert np.abs(out_skip - out_all).max() <= 1e-6 * scale
    assert np.array_equal(out_skip == 0, out_all == 0)
    jac_skip, jac_all = np.empty((*shape, 6), np.float32), np.empty((*shape, 6), np.float32)
    img_skip, img_all = np.empty(shape, np.float32), np.empty(shape, np.float32)
    _raymarch.march_with_jacobian(padded, table, m, dirs, n_samples, img_skip, jac_skip)
    _raymarch.march_with_jacobian(padded, full, m, dirs, n_samples, img_all, jac_all)
    assert np.abs(img_skip - out_all).max() <= 1e-6 * scale
    assert np.abs(jac_skip - jac_all).max() <= 1e-5 * np.abs(jac_all).max()
    assert np.abs(jac_all).max() > 0


def test_rays_through_empty_ends_are_trimmed():
    # a ray along j through the ball's centre: empty runs at both ends are dropped, the ball's are kept
    padded = _raymarch.pad_volume(sparse_volume())
    table = _raymarch.block_table(padded)
    n = 200
    q = (SHAPE_KJI[1] / n, 0.0, 0.0)  # index-space step along j, in (j, i, k) order below
    p = (1.0 + 9, 0.5 + 0.5 * q[0], 1.0 + 13)  # padded (i, j, k) of the first sample
    first, last = _raymarch._span(table, p[0], p[1], p[2], 0.0, q[0], 0.0, n, SHAPE_KJI[2], SHAPE_KJI[1],
                                  SHAPE_KJI[0])
    assert 0 < first < last < n
    # no sample that reads the ball is dropped (j from 10 to 18, padded 11 to 19)
    j_first, j_last = p[1] + first * q[0], p[1] + (last - 1) * q[0]
    assert j_first <= 10 and j_last >= 19
    # a ray that misses everything keeps no samples
    first, last = _raymarch._span(table, 1.0 + 20, p[1], 1.0 + 3, 0.0, q[0], 0.0, n, SHAPE_KJI[2], SHAPE_KJI[1],
                                  SHAPE_KJI[0])
    assert first == last


def test_pair_march_skipping_gives_the_plain_pair_march():
    # two materials that are empty in different places: a block is empty only where both are
    first = sparse_volume()
    second = np.zeros_like(first)
    second[2:6, 25:31, 20:26] = 0.02  # a box away from the ball
    packed, scales = _raymarch.pack_pair(first, second)
    table, full = _raymarch.block_table(packed), full_table(packed)
    assert 0 < np.diff(np.diff(np.diff(table, axis=0), axis=1), axis=2).mean() < 0.8
    m, dirs = rays()
    shape = (m.shape[0], 2, dirs.shape[0])
    out_skip, out_all = np.empty(shape, np.float32), np.empty(shape, np.float32)
    _raymarch.march_pair(packed, table, scales, m, dirs, 64, out_skip)
    _raymarch.march_pair(packed, full, scales, m, dirs, 64, out_all)
    for c in range(2):
        assert np.count_nonzero(out_all[:, c]) > 0.01 * out_all[:, c].size
        assert np.abs(out_skip[:, c] - out_all[:, c]).max() <= 1e-6 * out_all[:, c].max()
    jac_skip, jac_all = np.empty((*shape, 6), np.float32), np.empty((*shape, 6), np.float32)
    img_skip, img_all = np.empty(shape, np.float32), np.empty(shape, np.float32)
    _raymarch.march_pair_with_jacobian(packed, table, scales, m, dirs, 64, img_skip, jac_skip)
    _raymarch.march_pair_with_jacobian(packed, full, scales, m, dirs, 64, img_all, jac_all)
    assert np.abs(img_skip - out_all).max() <= 1e-6 * out_all.max()
    assert np.abs(jac_skip - jac_all).max() <= 1e-5 * np.abs(jac_all).max() and np.abs(jac_all).max() > 0
