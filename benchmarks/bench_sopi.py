"""SOPI's stage 2 (sopi-fine) on a sample CT: training time, and SOPI's Table 1 on the SOPI-like cases.

    PYTHONPATH=XRayCTRegistration NUMBA_NUM_THREADS=1 python benchmarks/bench_sopi.py --stages train,eval \
        --fine-budget 540 --rtpi-budget 180 --cases 20

``--ct`` picks the sample CT (``data.SAMPLES``: chest, the default, abdomen, spine, lung) and its detector
(``bench_multict.ct_camera``: 128 x 128 pixels of 4 mm, 1.5 mm for the spine crop).

Stages (``--stages``): ``train`` trains the sopi-fine model and an RTPI initialiser on the CT
(``training.train`` with the options of ``xrayctreg train --model KIND --time-budget B --rot-range 10
--trans-range 20``) for the benchmark's detector (128 x 128 pixels of 4 mm, sdd 1020 mm), on ``--device``;
``ablation`` trains the sopi-fine variants of SOPI's Table 2 (:data:`VARIANTS`) with the same budget;
``eval`` runs every row of the table on the CPU on the SOPI-like cases of the registration benchmark's
protocol (``evaluation.make_cases(..., init="sopi")``: ground truth uniform in +-10 deg / +-20 mm around
the AP view, start N(6.4, 3.8) deg and N(15, 8.6) mm away, X-ray = DRR + noise + blur + random
contrast). Models are kept in ``--work`` so the stages can run separately (also in parallel).
Results: ``benchmarks/results/sopi.md`` and ``sopi_rows.json`` (chest), ``sopi_<ct>.md`` and
``sopi_<ct>_rows.json`` (the others).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "XRayCTRegistration"))

from bench_multict import ct_camera  # noqa: E402
from common import machine_info  # noqa: E402
from XRayCTRegistrationLib import evaluation as ev  # noqa: E402
from XRayCTRegistrationLib.data import sample_ct_path  # noqa: E402
from XRayCTRegistrationLib.pipeline import register_xray  # noqa: E402
from XRayCTRegistrationLib.sopi_refine import load_fine_model  # noqa: E402
from XRayCTRegistrationLib.training import TrainOptions, load_initialiser, read_model_file, train  # noqa: E402
from XRayCTRegistrationLib.training_data import Augmentation, PoseRange  # noqa: E402
from XRayCTRegistrationLib.volume import Volume, read_ct  # noqa: E402

OUT = HERE / "results"

VARIANTS = {
    # name: (TrainOptions overrides, Table 2 label)
    "no-ce": (dict(composite=False), "without the composite encoder (leader branch alone)"),
    "no-el": (dict(mask_loss=False), "without the embedded-feature loss's projection mask"),
    "two": (dict(fine_shared=False), "with SOPI's two encoders (weights not shared; depth held)"),
}
"""SOPI's Table 2 ablation: sopi-fine variants trained with the same budget (``--stages ablation``)."""


def load_ct(args: argparse.Namespace, ct_path: str) -> Volume:
    """The CT in HU: from ``--ct-npz`` (``data`` int16 ``[k, j, i]`` and ``ijk_to_ras``, for a machine
    without SimpleITK) or the sample data file."""
    if args.ct_npz is None:
        return read_ct(ct_path)
    z = np.load(args.ct_npz)
    return Volume(z["data"].astype(np.float32), z["ijk_to_ras"])


def train_stage(args: argparse.Namespace, ct: Volume, ct_path: str) -> dict:
    """Train the sopi-fine model and the RTPI initialiser (``training.train``) on ``--device``; times and loads.

    The options are those of ``xrayctreg train --model KIND --time-budget B --rot-range 10 --trans-range 20
    --threads 1`` (batch 8 for sopi-fine, 32 for RTPI; ``--fine-batch`` changes the first).
    """
    work = args.work
    info = {}
    for kind, budget, name in (("sopi-fine", args.fine_budget, "fine.pt"), ("rtpi", args.rtpi_budget, "rtpi.pt")):
        if budget <= 0:
            continue
        options = TrainOptions(method=kind, time_budget_s=budget, batch_size=args.fine_batch if kind == "sopi-fine"
                               else 32, pose_range=PoseRange(10.0, 20.0),
                               augmentation=Augmentation(blur_on_photons=args.blur_on_photons))
        load0, t0 = os.getloadavg(), time.time()
        summary = train(ct, ct_camera(args.ct), work / name, options, device=args.device, ct_source=ct_path)
        info[kind] = {"device": str(args.device), "batch": options.batch_size, "budget_s": budget,
                      "wall_s": time.time() - t0, "load_start": load0, "load_end": os.getloadavg(), **summary}
        print(info[kind], flush=True)
    (work / "train_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return info


def ablation_stage(args: argparse.Namespace, ct: Volume, ct_path: str) -> None:
    """Train the ``--variants`` of :data:`VARIANTS` with the sopi-fine budget into ``fine-<variant>.pt``."""
    for name in args.variants.split(","):
        overrides, _ = VARIANTS[name]
        options = TrainOptions(method="sopi-fine", time_budget_s=args.fine_budget, batch_size=args.fine_batch,
                               pose_range=PoseRange(10.0, 20.0),
                               augmentation=Augmentation(blur_on_photons=args.blur_on_photons), **overrides)
        t0, load0 = time.time(), os.getloadavg()
        summary = train(ct, ct_camera(args.ct), args.work / f"fine-{name}.pt", options, device=args.device,
                        ct_source=ct_path)
        info = {"wall_s": time.time() - t0, "load_start": load0, "load_end": os.getloadavg(), **summary}
        (args.work / f"train_info-{name}.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
        print(name, info, flush=True)


def methods(args: argparse.Namespace, cases: ev.CaseSet, ct) -> dict:
    """Every row's ``register_fn`` (name -> function of a case)."""
    fine = load_fine_model(args.work / "fine.pt") if (args.work / "fine.pt").exists() else None
    rtpi = load_initialiser(args.work / "rtpi.pt") if (args.work / "rtpi.pt").exists() else None
    rows = {"Initial": lambda case: case.world_from_camera_init}
    for m in args.opt_methods.split(","):
        rows[f"Opt-{m[4:].upper()} ({m})"] = ev.intensity_method(m)(cases)
    if fine is not None:
        rows["sopi-fine (from the start)"] = ev.intensity_method("sopi-fine", model=fine)(cases)
        rows["sopi-fine + opt-lncc (from the start)"] = ev.intensity_method("sopi-fine-opt", model=fine)(cases)
    if rtpi is not None:
        def with_rtpi(method: str | None, **options):
            def fn(case: ev.Case):
                return register_xray(ct, case.xray, cases.camera, rtpi, method=method or "opt-lncc",
                                     refine=method is not None, volume_mu=cases.volume_mu, **options)
            return fn
        rows["RTPI alone"] = with_rtpi(None)
        rows["RTPI + opt-lncc"] = with_rtpi("opt-lncc")
        if fine is not None:
            rows["SOPI: RTPI + sopi-fine"] = with_rtpi("sopi-fine", model=fine)
            rows["SOPI + opt: RTPI + sopi-fine + opt-lncc"] = with_rtpi("sopi-fine-opt", model=fine)
        for name, (_, label) in VARIANTS.items():
            path = args.work / f"fine-{name}.pt"
            if (args.work / f"train_info-{name}.json").exists():  # finished training
                rows[f"RTPI + sopi-fine {label}"] = with_rtpi("sopi-fine", model=load_fine_model(path))
    return rows


def eval_stage(args: argparse.Namespace, ct) -> tuple[dict, dict]:
    """Run every row on the SOPI-like cases; returns (summaries, rows)."""
    cases = ev.make_cases(ct, ct_camera(args.ct), args.cases, seed=args.seed, init="sopi")
    fns = methods(args, cases, ct)
    ev.run_method(cases.subset([0]), fns[next(k for k in fns if k.startswith("Opt-"))], name="warm-up")
    rows, summaries = {}, {}
    for name, fn in fns.items():
        rows[name] = ev.run_method(cases, fn, name=name, log=print)
        summaries[name] = ev.summarize(rows[name], name)
    return summaries, rows


def write_report(args, summaries, rows, train_info, load_start, load_end, wall) -> None:
    """``sopi.md`` and ``sopi_rows.json``."""
    fine = read_model_file(args.work / "fine.pt") if (args.work / "fine.pt").exists() else None
    lines = [f"# SOPI stage 2 (sopi-fine) on the sample {args.ct} CT", "",
             f"Command: `PYTHONPATH=XRayCTRegistration NUMBA_NUM_THREADS=1 python benchmarks/bench_sopi.py "
             f"--ct {args.ct} --stages {args.stages} --fine-budget {args.fine_budget:g} "
             f"--rtpi-budget {args.rtpi_budget:g} --cases {args.cases} --seed {args.seed}`", "",
             f"Machine: {machine_info()}; load average {load_start[0]:.1f} at the start of the evaluation, "
             f"{load_end[0]:.1f} at its end (the machine is shared); evaluation wall time {wall:.0f} s.", ""]
    if train_info:
        lines += ["## Training", ""]
        for kind, t in train_info.items():
            lines.append(f"- {kind} on {t['device']}: batch {t['batch']}, {t['steps']} steps in "
                         f"{t['train_time_s']:.0f} s of training time (budget {t['budget_s']:g} s), "
                         f"{t['wall_s']:.0f} s wall, load average {t['load_start'][0]:.1f} -> "
                         f"{t['load_end'][0]:.1f}; validation {t['val_rot_deg']:.2f} deg, {t['val_trans_mm']:.1f} mm")
        lines.append("")
    if fine is not None:
        h = fine["history"]
        lines += [f"sopi-fine model: {fine['step']} steps in {fine['train_time_s']:.0f} s of training time; "
                  f"validation (15 fine iterations from starts about 10 deg / 20 mm away) "
                  f"{h[0][3]:.1f} deg / {h[0][4]:.1f} mm after the first {h[0][0]} steps, "
                  f"{h[-1][3]:.1f} deg / {h[-1][4]:.1f} mm at the end.", ""]
    lines += [f"## SOPI Table 1 layout: {args.cases} SOPI-like cases (seed {args.seed})", "",
              ev.markdown_table(list(summaries.values()), capture=False), ""]
    ablation = [summaries[k] for k in summaries if k.startswith("SOPI: ") or k.startswith("RTPI + sopi-fine ")
                or k == "sopi-fine (from the start)"]
    if len(ablation) > 1:
        lines += ["## SOPI Table 2 layout (ablation): RTPI, composite encoder (CE), embedded-feature loss mask (EL)",
                  "",
                  "Rows: SOPI = RTPI + CE + EL; without RTPI = sopi-fine from the case's start; the variants are "
                  "trained with the same budget (`--stages ablation`).", ""]
        for name in VARIANTS:
            f = args.work / f"train_info-{name}.json"
            if f.exists():
                t = json.loads(f.read_text(encoding="utf-8"))
                lines.append(f"- {name}: {t['steps']} steps in {t['train_time_s']:.0f} s of training time, "
                             f"{t['wall_s']:.0f} s wall")
        lines += ["", ev.markdown_table(ablation, capture=False), ""]
    tag = "sopi" if args.ct == "chest" else f"sopi_{args.ct}"
    (args.out / f"{tag}_rows.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    (args.out / f"{tag}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ct", default="chest", help="sample CT (data.SAMPLES name)")
    ap.add_argument("--stages", default="train,eval")
    ap.add_argument("--work", type=Path, default=Path("/tmp/xrayctreg_bench_sopi"))
    ap.add_argument("--fine-budget", type=float, default=540.0, help="sopi-fine training time, s")
    ap.add_argument("--rtpi-budget", type=float, default=180.0, help="RTPI training time, s (0: none)")
    ap.add_argument("--fine-batch", type=int, default=8, help="sopi-fine training batch")
    ap.add_argument("--device", default="cpu", help="training device (cpu, cuda); evaluation runs on the CPU")
    ap.add_argument("--ct-npz", type=Path, default=None, help="the CT as an npz (data, ijk_to_ras) instead of the "
                                                            "sample data file (for a machine without SimpleITK)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="ablation variants to train")
    ap.add_argument("--cases", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--opt-methods", default="opt-ncc,opt-gc,opt-ngi,opt-lncc")
    ap.add_argument("--blur-on-photons", action="store_true", help="train with the augmentation's blur on the "
                                                                      "photons (Augmentation.blur_on_photons)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)  # before the hour of work whose report goes there
    torch.set_num_threads(1)
    ct_path = str(sample_ct_path(name=args.ct)) if args.ct_npz is None else str(args.ct_npz)
    ct = load_ct(args, ct_path)
    stages = args.stages.split(",")
    train_info = train_stage(args, ct, ct_path) if "train" in stages else {}
    if "ablation" in stages:
        ablation_stage(args, ct, ct_path)
    if not train_info and (args.work / "train_info.json").exists():
        train_info = json.loads((args.work / "train_info.json").read_text(encoding="utf-8"))
    if "eval" in stages:
        load_start, t0 = os.getloadavg(), time.time()
        summaries, rows = eval_stage(args, ct)
        write_report(args, summaries, rows, train_info, load_start, os.getloadavg(), time.time() - t0)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
