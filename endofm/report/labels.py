"""Text labels drawn on video frames (``endofm predict``'s annotated video, the report's figures): legible at
the frame's own size on any footage, as light text on a dark backing box (or dark on a light one), in a font
that scales with the frame."""

from __future__ import annotations

from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

FONT_FRACTION = 0.05
"""Font size as a fraction of the frame's shorter side (18 px on the 360 px annotated video)."""
MIN_FONT = 11
"""The smallest font size in pixels: below it the glyphs blur together."""


@lru_cache(maxsize=16)
def label_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled sans-serif font at ``size`` pixels."""
    return ImageFont.load_default(size=size)


def font_size(image: Image.Image) -> int:
    """The label size for a frame: :data:`FONT_FRACTION` of its shorter side, at least :data:`MIN_FONT`."""
    return max(MIN_FONT, round(FONT_FRACTION * min(image.size)))


def draw_label(image: Image.Image, xy: tuple[float, float], text: str, fill: tuple[int, int, int] = (255, 255, 255),
               background: tuple[int, int, int] = (16, 16, 16), size: int | None = None,
               anchor_bottom: bool = False) -> tuple[int, int, int, int]:
    """Draw ``text`` on a backing box whose top-left corner is ``xy`` (bottom-left with ``anchor_bottom``),
    kept inside the frame; returns the box ``(x1, y1, x2, y2)``."""
    font = label_font(size or font_size(image))
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(2, round(0.3 * (bottom - top)))
    width, height = right - left + 2 * pad, bottom - top + 2 * pad
    x = min(max(0, round(xy[0])), max(0, image.width - width))
    y = round(xy[1]) - height if anchor_bottom else round(xy[1])
    y = min(max(0, y), max(0, image.height - height))
    draw.rectangle([x, y, x + width - 1, y + height - 1], fill=background)
    draw.text((x + pad - left, y + pad - top), text, font=font, fill=fill)
    return x, y, x + width, y + height
