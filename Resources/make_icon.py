"""Draw the module icon: a C-arm view of a chest (ribs, spine) with an X-ray fan and a DRR overlay."""
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]

def icon(size: int) -> Image.Image:
    """The icon at ``size`` x ``size`` pixels (RGBA)."""
    s = 4 * size  # draw large, then downsample (anti-aliasing)
    im = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    u = s / 128
    # detector panel
    d.rounded_rectangle([14*u, 20*u, 114*u, 120*u], radius=10*u, fill=(28, 36, 48, 255),
                        outline=(120, 170, 220, 255), width=int(3*u))
    # chest: body ellipse, lungs, spine, ribs
    d.ellipse([26*u, 34*u, 102*u, 112*u], fill=(70, 80, 92, 255))
    for x0 in (32, 68):
        d.ellipse([x0*u, 42*u, (x0+28)*u, 104*u], fill=(22, 28, 38, 255))
    for k in range(6):
        y = (46 + 10*k)*u
        d.rectangle([60*u, y, 68*u, y + 7*u], fill=(230, 230, 220, 255))
        for side in (-1, 1):
            d.arc([(64 - 36)*u if side < 0 else 64*u, y - 6*u, 64*u if side < 0 else (64 + 36)*u, y + 14*u],
                  start=200 if side < 0 else 270, end=270 if side < 0 else 340,
                  fill=(215, 215, 205, 255), width=int(3*u))
    # DRR overlay tint (registration): orange outline slightly shifted
    d.ellipse([30*u, 30*u, 106*u, 108*u], outline=(255, 150, 40, 230), width=int(3*u))
    # X-ray source and fan at the top
    d.polygon([(64*u, 4*u), (20*u, 22*u), (108*u, 22*u)], fill=(255, 210, 80, 90))
    d.ellipse([58*u, 0, 70*u, 10*u], fill=(255, 200, 60, 255))
    return im.resize((size, size), Image.LANCZOS)

if __name__ == "__main__":
    icon(128).save(ROOT / "XRayCTRegistration/Resources/Icons/XRayCTRegistration.png")
    icon(128).save(ROOT / "Resources/XRayCTRegistration.png")
