"""Draw docs/carm_angles.png: the C-arm angle convention of XRayCTRegistrationLib.carm, from the code itself.

Run from the repository root: ``python docs/make_carm_figure.py`` (needs matplotlib).
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from XRayCTRegistrationLib.carm import CArmPosition, world_from_carm  # noqa: E402

SID, SDD = 70.0, 100.0


def draw_view(ax, positions, plane, labels, title):
    """One panel: the patient outline, and source -> detector for each position, in two world axes."""
    i, j = plane
    if plane == (0, 1):
        ax.add_patch(plt.matplotlib.patches.Ellipse((0, 0), 60, 36, fill=False, lw=1.5))
        ax.text(0, 0, "patient\n(seen from the feet)", ha="center", va="center", fontsize=8)
    else:
        ax.add_patch(plt.matplotlib.patches.Rectangle((-18, -60), 36, 120, fill=False, lw=1.5))
        ax.text(0, 0, "patient\n(seen from\nthe right)", ha="center", va="center", fontsize=8)
    for (primary, secondary), label, colour in zip(positions, labels, ("C0", "C1", "C2", "C3"), strict=False):
        pose = world_from_carm(CArmPosition(primary, secondary, SID), np.zeros(3), SDD)
        source, z, x = pose[:3, 3], pose[:3, 2], pose[:3, 0]
        detector = source + SDD * z
        ax.plot(*source[[i, j]], "o", color=colour, ms=8)
        ax.annotate("", xy=detector[[i, j]], xytext=source[[i, j]], arrowprops={"arrowstyle": "->", "color": colour})
        half = 15 * (x if abs(x[[i, j]]).sum() > 0.5 else pose[:3, 1])
        ends = np.array([detector - half, detector + half])
        ax.plot(ends[:, i], ends[:, j], "-", color=colour, lw=4)
        ax.text(*(source[[i, j]] * 1.15), f"source\n{label}", color=colour, ha="center", va="center", fontsize=8)
    ax.set_aspect("equal")
    ax.set_xlim(-110, 110)
    ax.set_ylim(-110, 110)
    ax.set_title(title, fontsize=10)


OUT = Path(__file__).with_name("carm_angles.png")


def main(out: Path = OUT) -> None:
    """Draw both panels and write the PNG."""
    fig, (axial, sagittal) = plt.subplots(1, 2, figsize=(11, 6.2))
    draw_view(axial, [(0, 0), (90, 0), (-45, 0)], (0, 1), ["LAO 0, CRA 0", "LAO 90", "RAO 45"],
              "Primary angle about the long axis (axial plane)")
    axial.set_xlabel("R (mm): the patient's right on the left, as seen from the feet")
    axial.set_ylabel("A (mm): anterior up")
    axial.invert_xaxis()  # seen from the feet: the patient's right on the left of the panel
    draw_view(sagittal, [(0, 0), (0, 30), (0, -30)], (1, 2), ["CRA 0", "CRA 30", "CAU 30"],
              "Secondary angle toward the head (sagittal plane)")
    sagittal.set_xlabel("A (mm): posterior on the left, anterior on the right")
    sagittal.set_ylabel("S (mm): head up")
    fig.suptitle("C-arm angles (DICOM PositionerPrimaryAngle / SecondaryAngle): the detector (thick bar) faces the "
                 "chest at 0, 0;\nLAO turns it to the patient's left, CRA toward the head; arrows: source -> detector",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
