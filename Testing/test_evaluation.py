import json

import numpy as np
import pytest
from XRayCTRegistrationLib import evaluation as ev
from XRayCTRegistrationLib.errors import InputError
from XRayCTRegistrationLib.geometry import Camera
from XRayCTRegistrationLib.metrics import mtre
from XRayCTRegistrationLib.phantoms import chest_phantom

CAM = Camera(1000.0, 32, 32, 12.0, 12.0)


@pytest.fixture(scope="module")
def ct():
    return chest_phantom((40, 32, 32), (5.0, 5.0, 5.0))


@pytest.fixture(scope="module")
def sopi(ct):
    return ev.make_cases(ct, CAM, 3, seed=7, n_points=40, n_samples=64)


def truth(case):
    return case.world_from_camera_gt


def start(case):
    return case.world_from_camera_init


def test_cases_are_deterministic_and_seeded(ct, sopi):
    again = ev.make_cases(ct, CAM, 3, seed=7, n_points=40, n_samples=64)
    other = ev.make_cases(ct, CAM, 3, seed=8, n_points=40, n_samples=64)
    for a, b, c in zip(sopi, again, other, strict=True):
        np.testing.assert_array_equal(a.xray, b.xray)
        np.testing.assert_array_equal(a.params_init, b.params_init)
        assert not np.allclose(a.params_gt, c.params_gt)
    assert len(sopi) == 3 and sopi.init == "sopi"


def test_sopi_cases(sopi):
    ref = sopi.reference
    for case in sopi:
        assert case.xray.shape == (32, 32) and case.xray.dtype == np.float32
        assert np.all(np.abs(case.params_gt[:3]) <= 10) and np.all(np.abs(case.params_gt[3:]) <= 20)
        np.testing.assert_allclose(case.world_from_camera_gt, ref.pose(case.params_gt))
        assert case.initial_mtre == pytest.approx(mtre(sopi.points, case.world_from_camera_gt,
                                                       case.world_from_camera_init))
        assert case.initial_mtre > 0
        # the X-ray is a noisy, re-contrasted DRR of the true pose: it correlates best with the true DRR
        drr_gt, drr_init = sopi.render(case.world_from_camera_gt), sopi.render(case.world_from_camera_init)
        assert np.corrcoef(drr_gt.ravel(), case.xray.ravel())[0, 1] > 0.9
        assert (np.corrcoef(drr_gt.ravel(), case.xray.ravel())[0, 1]
                > np.corrcoef(drr_init.ravel(), case.xray.ravel())[0, 1])


def test_hard_set_spans_its_range(ct):
    hard = ev.make_cases(ct, CAM, 6, seed=1, init="hard", hard_max_mtre=60.0, n_points=40, n_samples=48)
    init = np.array([c.initial_mtre for c in hard])
    # case k lies in [k, k + 1) * 10 mm
    assert np.all(init >= np.arange(6) * 10.0 - 1e-6) and np.all(init < np.arange(1, 7) * 10.0 + 1e-6)
    assert init.min() < 10 and init.max() > 50


def test_run_method_known_answers(sopi, tmp_path):
    rows_gt = ev.run_method(sopi, truth, name="truth")
    rows_0 = ev.run_method(sopi, start, name="start")
    assert [r["case"] for r in rows_gt] == [0, 1, 2]
    for r in rows_gt:
        assert r["mtre"] == pytest.approx(0, abs=1e-9) and r["mpd"] == pytest.approx(0, abs=1e-9)
        assert r["rotation_error_deg"] == pytest.approx(0, abs=1e-4)
        assert max(r["param_errors"]) < 1e-6
        assert r["success_mtre"] and r["success_sopi"]
        assert r["ncc"] > 0.9 and 0 < r["ssim"] <= 1
    for r, case in zip(rows_0, sopi, strict=True):
        assert r["mtre"] == pytest.approx(case.initial_mtre)
        assert not r["success_mtre"]
        assert r["ncc"] < rows_gt[case.index]["ncc"]
    s_gt, s_0 = ev.summarize(rows_gt), ev.summarize(rows_0)
    assert s_gt["success_rate"] == 1.0 and s_gt["failure_rate"] == 0.0 and s_gt["name"] == "truth"
    assert s_0["success_rate"] == 0.0 and s_0["failure_rate"] == 1.0
    assert s_0["mtre_mean"] == pytest.approx(np.mean([c.initial_mtre for c in sopi]))
    assert s_0["capture_range"] == 0.0
    table = ev.markdown_table([s_gt, s_0])
    lines = table.strip().splitlines()
    assert len(lines) == 4 and lines[2].startswith("| truth | 3 |") and "100.0 %" in lines[2]
    json.dumps(rows_gt + rows_0)  # JSON-ready
    # the plot is written (matplotlib is a test extra)
    out = ev.plot_success_vs_initial_mtre({"truth": rows_gt, "start": rows_0}, tmp_path / "p.png")
    assert out.stat().st_size > 1000


def test_mixed_results_and_a_crashing_method(sopi):
    def half(case):
        return case.world_from_camera_gt if case.index % 2 == 0 else {"world_from_camera": case.world_from_camera_init,
                                                                    "iterations": 3, "success": False}

    rows = ev.run_method(sopi, half, name="half")
    assert [r["success_mtre"] for r in rows] == [True, False, True]
    assert rows[1]["iterations"] == 3 and rows[1]["reported_success"] is False
    assert ev.summarize(rows)["success_rate"] == pytest.approx(2 / 3)

    def boom(case):
        raise RuntimeError("no convergence")

    rows = ev.run_method(sopi, boom, name="boom")
    assert all(not r["success_mtre"] and "no convergence" in r["error"] for r in rows)


def test_summary_capture_range_and_bins():
    def row(init, ok, t):
        return {"initial_mtre": init, "success_mtre": ok, "success_sopi": ok, "rotation_error_deg": 0.5 if ok else 9,
                "translation_error_mm": 1.0 if ok else 20, "time_s": t, "mtre": 1.0 if ok else 30.0, "mpd": 1.0,
                "mrpd": 1.0, "ncc": 0.9, "ssim": 0.8}

    rows = [row(2, True, 1), row(7, True, 2), row(12, True, 3), row(13, False, 4), row(27, True, 10)]
    s = ev.summarize(rows, name="m")
    assert s["capture_range"] == 10.0  # bin [10, 15) succeeds at 50 %
    assert s["capture_range_loose"] == 10.0  # the failure's final mTRE is 30 mm
    rows[3]["mtre"] = 4.0  # a failure at 2 mm that reached the basin
    assert ev.summarize(rows)["capture_range_loose"] == 30.0
    assert ev.summarize(rows)["capture_range"] == 10.0
    assert "≥ 30 (all bins)" in ev.markdown_table([ev.summarize(rows)])
    np.testing.assert_allclose(ev.success_by_bin(rows, mtre_threshold=5.0)[1], [1, 1, 1, 1])
    assert s["time_median"] == 3 and s["time_mean"] == 4
    assert s["failure_rate"] == pytest.approx(0.2)
    assert s["rotation_mean"] == pytest.approx((0.5 * 4 + 9) / 5)
    centres, rates, counts = ev.success_by_bin(rows)
    np.testing.assert_allclose(centres, [2.5, 7.5, 12.5, 27.5])
    np.testing.assert_allclose(rates, [1, 1, 0.5, 1])
    assert counts.tolist() == [1, 1, 2, 1]


def test_bad_input(ct):
    with pytest.raises(InputError, match="n must be"):
        ev.make_cases(ct, CAM, 0)
    with pytest.raises(InputError, match="init must be"):
        ev.make_cases(ct, CAM, 1, init="easy")
    with pytest.raises(InputError, match="no rows"):
        ev.summarize([])


def test_intensity_method_improves():
    # noise-free X-rays of a finer phantom: the tiny noisy scene above is too ambiguous to register
    ct = chest_phantom((48, 40, 40), (4.0, 4.0, 4.0))
    cases = ev.make_cases(ct, Camera(1000.0, 48, 48, 6.0, 6.0), 1, seed=7, n_points=40, n_samples=64, photons=0,
                          blur_px=0)
    fn = ev.intensity_method("opt-ncc", levels=(2, 1), max_iterations=(40, 20))(cases)
    rows = ev.run_method(cases.subset([0]), fn, name="opt-ncc")
    assert len(rows) == 1 and rows[0]["case"] == 0 and rows[0]["iterations"] > 0
    assert rows[0]["mtre"] < 0.5 * rows[0]["initial_mtre"]


def test_depth_error_and_the_coverage_of_the_reported_depth_sd(sopi):
    case = sopi[0]
    ref = sopi.reference
    # moving the CT 3 mm along the camera's z (tz) puts its centre 3 mm farther from the source
    moved = ref.pose(case.params_gt + np.array([0, 0, 0, 0, 0, 3.0]))
    row = ev.evaluate_case(sopi, case, moved)
    assert row["depth_error_mm"] == pytest.approx(3.0, abs=1e-9)
    assert ev.evaluate_case(sopi, case, truth(case))["depth_error_mm"] == pytest.approx(0.0, abs=1e-9)

    class Result:  # what a method that reports its depth uncertainty returns
        def __init__(self, w, sd):
            self.world_from_camera = w
            self.uncertainty = type("U", (), {"depth_mm": sd})()

    rows = ev.run_method(sopi.subset([0, 1]), lambda c: Result(ref.pose(c.params_gt + [0, 0, 0, 0, 0, 3.0]),
                                                               2.0 if c.index == 0 else 1.0))
    assert [r["depth_sd_mm"] for r in rows] == [2.0, 1.0]
    s = ev.summarize(rows)
    assert s["depth_error_median"] == pytest.approx(3.0) and s["depth_coverage_2sd"] == pytest.approx(0.5)
