"""Reference pictures for the example workflows' LoadImage nodes (tests, screenshots).

Nothing is shipped: each name is drawn on demand with PIL (deterministic, 512x512), so a test
can put the files into a server's input folder. Real use: pick your own images in LoadImage.
"""

from __future__ import annotations

import math
from pathlib import Path

SIZE = 512


def _gradient(top: tuple[int, int, int], bottom: tuple[int, int, int], size: int = SIZE):
    from PIL import Image

    img = Image.new("RGB", (size, size))
    px = img.load()
    for y in range(size):
        t = y / (size - 1)
        c = tuple(round(a + (b - a) * t) for a, b in zip(top, bottom))
        for x in range(size):
            px[x, y] = c
    return img


def _landscape(sky_top, sky_bottom, sun, hill, size=SIZE):
    from PIL import ImageDraw

    img = _gradient(sky_top, sky_bottom, size)
    d = ImageDraw.Draw(img)
    d.ellipse((size * 0.58, size * 0.16, size * 0.82, size * 0.40), fill=sun)
    pts = [(x, size * 0.66 + math.sin(x / size * 6.0) * size * 0.05) for x in range(0, size + 8, 8)]
    d.polygon([(0, size), *pts, (size, size)], fill=hill)
    return img


def _stripes(colors, size=SIZE, width=48):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), colors[0])
    d = ImageDraw.Draw(img)
    for k, x in enumerate(range(-size, 2 * size, width)):
        d.polygon([(x, 0), (x + width, 0), (x + width - size, size), (x - size, size)], fill=colors[k % len(colors)])
    return img


def _shapes(bg, fg, size=SIZE):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    d.rectangle((size * 0.10, size * 0.55, size * 0.45, size * 0.92), fill=fg[0])
    d.ellipse((size * 0.50, size * 0.12, size * 0.90, size * 0.52), fill=fg[1])
    d.polygon([(size * 0.15, size * 0.45), (size * 0.35, size * 0.08), (size * 0.55, size * 0.45)], fill=fg[2])
    return img


def _face(bg, skin, hair, size=SIZE):
    from PIL import ImageDraw

    img = _gradient(bg, tuple(max(0, c - 60) for c in bg), size)
    d = ImageDraw.Draw(img)
    d.ellipse((size * 0.25, size * 0.12, size * 0.75, size * 0.40), fill=hair)
    d.ellipse((size * 0.30, size * 0.20, size * 0.70, size * 0.70), fill=skin)
    for cx in (0.42, 0.58):
        d.ellipse((size * (cx - 0.03), size * 0.38, size * (cx + 0.03), size * 0.44), fill=(40, 30, 30))
    d.arc((size * 0.40, size * 0.46, size * 0.60, size * 0.60), 20, 160, fill=(150, 50, 50), width=6)
    d.rectangle((size * 0.22, size * 0.72, size * 0.78, size), fill=(60, 90, 160))
    return img


def _outline(size=SIZE):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (250, 250, 250))
    d = ImageDraw.Draw(img)
    d.rectangle((size * 0.18, size * 0.45, size * 0.82, size * 0.88), outline=(20, 20, 20), width=10)
    roof = [(size * 0.12, size * 0.47), (size * 0.5, size * 0.14), (size * 0.88, size * 0.47)]
    d.polygon(roof, outline=(20, 20, 20), width=10)
    d.rectangle((size * 0.42, size * 0.62, size * 0.58, size * 0.88), fill=(20, 20, 20))
    return img


DRAWINGS = {
    "ipak_reference.png": lambda: _landscape((40, 70, 160), (250, 170, 90), (255, 230, 120), (40, 90, 60)),
    "ipak_style.png": lambda: _stripes([(230, 60, 90), (250, 200, 40), (40, 160, 200), (30, 30, 60)]),
    "ipak_composition.png": lambda: _shapes((235, 225, 205), [(60, 80, 140), (200, 90, 60), (70, 140, 90)]),
    "ipak_subject_left.png": lambda: _face((120, 170, 220), (240, 200, 170), (90, 50, 30)),
    "ipak_subject_right.png": lambda: _face((220, 160, 120), (200, 150, 120), (30, 30, 30)),
    "ipak_frame_1.png": lambda: _landscape((20, 30, 90), (90, 60, 140), (240, 240, 255), (20, 40, 50)),
    "ipak_frame_2.png": lambda: _landscape((60, 140, 220), (180, 220, 250), (255, 250, 200), (60, 140, 60)),
    "ipak_frame_3.png": lambda: _landscape((160, 60, 40), (250, 190, 80), (255, 120, 60), (90, 60, 30)),
    "ipak_control.png": _outline,
}


def draw(name: str):
    """The PIL image for one of the workflows' input names."""
    try:
        return DRAWINGS[name]()
    except KeyError:
        raise KeyError(f"no reference picture named {name!r} (known: {', '.join(DRAWINGS)})") from None


def write(names, folder: str | Path) -> list[Path]:
    """Draw `names` into `folder` (e.g. a ComfyUI server's input folder); returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        path = folder / name
        if not path.is_file():
            draw(name).save(path)
        out.append(path)
    return out
