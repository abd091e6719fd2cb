"""Stage-1 initialisation on the real chest CT: training time, accuracy over the whole pose range,
initialisation + refinement, refinement alone, and an ablation of the regressor's parts and RTPI.

    PYTHONPATH=XRayCTRegistration python benchmarks/bench_init.py --main-minutes 13 --ablation-minutes 3

Stages (``--stages``): ``data`` (test X-rays), ``main`` (train the full regressor), ``ablation``
(train the variants), ``eval`` (evaluate every trained model; refinement where registration is
available). Models and the test set are kept in ``--work`` so stages can be re-run separately.
Results go to ``benchmarks/results/init.md`` (rewritten after each evaluation).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from XRayCTRegistrationLib.data import sample_ct_path
from XRayCTRegistrationLib.geometry import Camera, ReferenceView, invert_rigid, transform_points
from XRayCTRegistrationLib.projector import Projector
from XRayCTRegistrationLib.simulate import NoiseModel, xray_from_drr
from XRayCTRegistrationLib.training import TrainOptions, initialise, load_initialiser, train
from XRayCTRegistrationLib.training_data import PoseRange
from XRayCTRegistrationLib.volume import Volume, hu_to_mu, read_ct

CAMERA = Camera(sdd=1020.0, rows=256, cols=256, row_spacing=1.6, col_spacing=1.6)

VARIANTS = {
    # name: (TrainOptions overrides, label)
    "A": (dict(autoencoder=False, attention=False, incremental=False), "A: EfficientNet-like backbone"),
    "A+B": (dict(autoencoder=True, attention=False, incremental=False), "A+B: + autoencoder"),
    "A+C": (dict(autoencoder=False, attention=True, incremental=False), "A+C: + attention and 2D pos. embedding"),
    "A+B+C": (dict(autoencoder=True, attention=True, incremental=False), "A+B+C"),
    "[A+B+C]*": (dict(autoencoder=True, attention=True, incremental=True), "[A+B+C]*: + incremental learning"),
    "RTPI*": (dict(method="rtpi", incremental=True), "RTPI (SOPI), incremental"),
}


def target_points(ct: Volume, n: int = 400, seed: int = 0) -> np.ndarray:
    """Bone voxels (> 250 HU) of the CT, world RAS, mm."""
    try:
        from XRayCTRegistrationLib.metrics import target_points as tp

        return np.asarray(tp(ct, n))
    except ImportError:
        k, j, i = np.nonzero(ct.data > 250)
        idx = np.random.default_rng(seed).choice(len(i), size=min(n, len(i)), replace=False)
        ijk = np.stack([i[idx], j[idx], k[idx]], 1).astype(float)
        return transform_points(ct.ijk_to_ras, ijk)


def errors(points: np.ndarray, gt: np.ndarray, est: np.ndarray, ref: ReferenceView) -> dict:
    """mTRE, mPD (detector mm), rotation (geodesic, deg) and translation (mm) errors."""
    pg = transform_points(invert_rigid(gt), points)
    pe = transform_points(invert_rigid(est), points)
    mtre = float(np.linalg.norm(pg - pe, axis=1).mean())
    dg, de = CAMERA.detector_points(pg), CAMERA.detector_points(pe)
    mpd = float(np.linalg.norm(dg - de, axis=1).mean())
    r = est[:3, :3].T @ gt[:3, :3]
    rot = float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))))
    pgp, pep = ref.params(gt), ref.params(est)
    trans = float(np.linalg.norm(pgp[3:] - pep[3:]))
    return {"mtre": mtre, "mpd": mpd, "rot": rot, "trans": trans}


def make_test_set(ct: Volume, n: int, seed: int, path: Path) -> None:
    ref = ReferenceView.ap(ct.center, CAMERA.sdd)
    rng = np.random.default_rng(seed)
    params = PoseRange().sample(rng, n)
    mu = Volume(hu_to_mu(ct.data), ct.ijk_to_ras)
    proj = Projector(mu, CAMERA)
    xrays, poses = [], []
    for p in params:
        pose = ref.pose(p)
        with torch.no_grad():
            drr = proj(torch.as_tensor(pose)).numpy()
        xrays.append(xray_from_drr(drr, NoiseModel.random(rng, photons=1e4, blur_px=1.0), rng))
        poses.append(pose)
    np.savez_compressed(path, params=params, poses=np.array(poses), xrays=np.array(xrays))


def train_variant(ct: Volume, name: str, overrides: dict, minutes: float, work: Path, log: list) -> None:
    out = work / f"model_{name.replace('*', 's').replace('+', '_').replace('[', '').replace(']', '')}.pt"
    options = TrainOptions(time_budget_s=60 * minutes, **overrides)
    t0 = time.perf_counter()
    last = [0.0]

    def progress(f: float, m: str) -> None:
        if time.perf_counter() - last[0] > 30:
            print(f"  [{name}] {100 * f:.0f}% {m}", flush=True)
            last[0] = time.perf_counter()

    summary = train(ct, CAMERA, out, options, ct_source="cxr.nii.gz", progress=progress)
    summary["wall_s"] = time.perf_counter() - t0
    summary["model"] = str(out)
    (work / f"{out.stem}.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(f"{name}: {summary}", flush=True)
    log.append(name)


def evaluate(ct: Volume, work: Path, names: list[str], refine_names: list[str], max_refine: int,
             fine: dict) -> dict:
    data = np.load(work / "test.npz")
    points = target_points(ct)
    ref = ReferenceView.ap(ct.center, CAMERA.sdd)
    mu = Volume(hu_to_mu(ct.data), ct.ijk_to_ras)
    from XRayCTRegistrationLib.pipeline import register_xray
    from XRayCTRegistrationLib.registration import DEFAULT_MAX_ITERATIONS, default_levels

    default = {"levels": default_levels(CAMERA), "max_iterations": DEFAULT_MAX_ITERATIONS}
    schedules = {"registration's default levels": default,
                 f"levels {fine['levels']}, iterations {fine['max_iterations']}, as register --init-model": fine}
    cases = list(zip(data["xrays"], data["poses"], strict=True))

    def pipeline(xray, init, **kw):
        """``pipeline.register_xray`` with opt-ncc from ``init`` (a pose or a loaded model)."""
        return register_xray(ct, xray, CAMERA, init, method="opt-ncc", volume_mu=mu, reference=ref, **kw)

    pipeline(cases[0][0], ref.world_from_camera, max_iterations=2)  # compile kernels
    rows = {}
    for name in names:
        stem = f"model_{name.replace('*', 's').replace('+', '_').replace('[', '').replace(']', '')}"
        mpath = work / f"{stem}.pt"
        if not mpath.exists():
            continue
        summary = json.loads((work / f"{stem}.json").read_text(encoding="utf-8"))
        model = load_initialiser(mpath)
        model.check_ct(ct)  # hashes the CT once (kept with it), outside the timings
        res = []
        for xray, gt in cases:
            t0 = time.perf_counter()
            est = initialise(model, xray, CAMERA)
            res.append({**errors(points, gt, est, ref), "time": time.perf_counter() - t0})
        rows[name] = {"summary": summary, "init": res}
        print(name, table_row(name, res), flush=True)
        if name not in refine_names:
            continue
        for label, kw in schedules.items():
            out = []
            for xray, gt in cases[:max_refine]:
                t0 = time.perf_counter()
                r = pipeline(xray, model, **kw)  # the model's prediction, then opt-ncc with the schedule kw
                out.append({**errors(points, gt, r.world_from_camera, ref), "time": time.perf_counter() - t0})
            rows[f"{name} + opt-ncc refinement ({label})"] = {"refined": out}
            print(label, table_row(label, out), flush=True)
    for label, kw in schedules.items():
        out = []
        for xray, gt in cases[:max_refine]:
            t0 = time.perf_counter()
            r = pipeline(xray, ref.world_from_camera, **kw)
            out.append({**errors(points, gt, r.world_from_camera, ref), "time": time.perf_counter() - t0})
        rows[f"opt-ncc from the AP reference view, refinement alone ({label})"] = {"refined": out}
        print(label, table_row(label, out), flush=True)
    (work / "eval.json").write_text(json.dumps(rows), encoding="utf-8")
    return rows


def table_row(label: str, res: list[dict]) -> str:
    a = {k: np.array([r[k] for r in res]) for k in res[0]}
    ok2 = 100 * np.mean(a["mtre"] < 2)
    sopi = 100 * np.mean((a["rot"] < 3) & (a["trans"] < 3))
    ok10 = 100 * np.mean(a["mtre"] < 10)
    return (f"| {label} | {len(res)} | {a['rot'].mean():.2f} ± {a['rot'].std():.2f} | "
            f"{a['trans'].mean():.1f} ± {a['trans'].std():.1f} | "
            f"{a['mtre'].mean():.1f} (median {np.median(a['mtre']):.1f}) | "
            f"{a['mpd'].mean():.1f} | {ok2:.0f} | {sopi:.0f} | {ok10:.0f} | {a['time'].mean():.3f} |")


HEADER = ("| method | n | rotation error (deg) | translation error (mm) | mTRE (mm) | mPD (mm) | "
          "success mTRE<2mm (%) | success rot<3°&trans<3mm (%) | mTRE<10mm (%) | time (s) |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def write_report(rows: dict, args: argparse.Namespace, out: Path) -> None:
    lines = ["# Stage-1 initialisation on the real chest CT", "",
             f"Command: `{' '.join(['PYTHONPATH=XRayCTRegistration', 'python'] + sys.argv)}`", "",
             f"CT: the sample chest CT (512x512x133, 0.70x0.70x2.5 mm). Detector: {CAMERA.rows}x{CAMERA.cols} px of "
             f"{CAMERA.row_spacing} mm, sdd {CAMERA.sdd} mm, AP reference view (sid 0.7 sdd). Test set: "
             f"{args.n_test} poses uniform in +-30 deg about every axis and +-50 mm along every axis, synthetic "
             "X-rays (full-resolution DRR, Poisson noise 1e4 photons, blur 1 px, random contrast/gamma). "
             "Machine: 2 CPU cores shared with other work (load 3-5 during the runs), no GPU.", ""]
    lines += ["## Training", "", "| model | training time budget (s) | steps | wall time incl. setup (s) | "
              "validation rot (deg) | validation trans (mm) |", "|---|---|---|---|---|---|"]
    for name, row in rows.items():
        s = row.get("summary")
        if s:
            lines.append(f"| {name} | {s['train_time_s']:.0f} | {s['steps']} | {s['wall_s']:.0f} | "
                         f"{s['val_rot_deg']:.2f} | {s['val_trans_mm']:.1f} |")
    lines += ["", "## Accuracy on held-out poses over the whole range", "", HEADER]
    for name, row in rows.items():
        if row.get("init"):
            lines.append(table_row(f"{name} (initialisation alone)", row["init"]))
        if row.get("refined"):
            lines.append(table_row(name, row["refined"]))
    lines += ["", "Rotation error: geodesic angle; translation error: norm of the difference of the (tx, ty, tz) "
              "pose parameters. Time: initialisation (network forward on the 48x48 input) and, where given, "
              "initialisation + refinement (`registration.register`, opt-ncc, with the schedule named in the row); "
              "times vary with the load from other work on the shared cores."]
    notes = Path(__file__).with_name("bench_init_notes.md")
    if notes.exists():
        lines += ["", notes.read_text(encoding="utf-8").rstrip()]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stages", default="data,main,ablation,eval")
    ap.add_argument("--main-minutes", type=float, default=13.0)
    ap.add_argument("--ablation-minutes", type=float, default=3.0)
    ap.add_argument("--ablation", default="A,A+B,A+C,A+B+C,[A+B+C]*,RTPI*")
    ap.add_argument("--n-test", type=int, default=40)
    ap.add_argument("--max-refine", type=int, default=20)
    ap.add_argument("--fine-levels", default="8,4,2", help="second refinement schedule: detector factors")
    ap.add_argument("--fine-iterations", default="80,40,20", help="second refinement schedule: iterations per level")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 avoids spinning threads fighting other work on a shared 2-core machine)")
    ap.add_argument("--work", default="/tmp/bench_init")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "init.md"))
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    stages = args.stages.split(",")
    ct = read_ct(sample_ct_path())
    if "data" in stages or not (work / "test.npz").exists():
        make_test_set(ct, args.n_test, 123, work / "test.npz")
    trained: list[str] = []
    if "main" in stages:
        train_variant(ct, "main [A+B+C]*", VARIANTS["[A+B+C]*"][0], args.main_minutes, work, trained)
    if "ablation" in stages:
        for name in args.ablation.split(","):
            train_variant(ct, name, VARIANTS[name][0], args.ablation_minutes, work, trained)
    if "eval" in stages:
        names = ["main [A+B+C]*"] + args.ablation.split(",")
        fine = {"levels": tuple(float(v) for v in args.fine_levels.split(",")),
                "max_iterations": tuple(int(v) for v in args.fine_iterations.split(","))}
        rows = evaluate(ct, work, names, ["main [A+B+C]*"], args.max_refine, fine)
        write_report(rows, args, Path(args.out))
    if "report" in stages:  # rewrite the report from the saved evaluation
        write_report(json.loads((work / "eval.json").read_text(encoding="utf-8")), args, Path(args.out))


if __name__ == "__main__":
    main()
