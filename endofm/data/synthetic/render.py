"""Procedural endoscopy-like videos with polyps: :func:`render_video`.

The scene is a tube seen from inside: a dark vanishing lumen, ring folds with a little angular wobble,
pink mucosa texture attached to the tube wall (so it moves with the camera), vignetting and specular
sparkles on the fold ridges. The camera drifts, rolls, zooms and advances along the lumen, with a little
motion blur. A polyp, when present, sits on the wall and grows as the camera approaches it; it is
round, elongated or sessile, shaded as a dome with a specular spot, and comes with an exact per-frame
binary mask and box. Everything is vectorised numpy and seeded by a :class:`numpy.random.Generator`, so
the same seed always gives the same frames. The polyp classes are KUMC's
(:data:`~endofm.data.datasets.kumc.POLYP_CLASSES`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from endofm.data.datasets.kumc import POLYP_CLASSES
from endofm.errors import InputError

POLYP_SHAPES = ("round", "elongated", "sessile")

# Mucosa and polyp colours (linear RGB in [0, 1]); both labels draw the mucosa from the same range so that
# the global colour of a frame says nothing about the label.
_MUCOSA_LOW = np.array([0.85, 0.42, 0.42])
_MUCOSA_HIGH = np.array([1.0, 0.6, 0.58])
_POLYP_COLOURS = {
    "adenomatous": (np.array([0.78, 0.18, 0.2]), np.array([0.68, 0.22, 0.32])),
    "hyperplastic": (np.array([0.98, 0.66, 0.6]), np.array([0.92, 0.6, 0.64])),
}

Box = tuple[int, int, int, int]
_TEX_TURN, _TEX_DEPTH = 128, 256


@dataclass
class SyntheticVideo:
    """One rendered video: ``frames`` uint8 [T, H, W, 3] RGB, ``masks`` bool [T, H, W], ``boxes`` one
    ``(x1, y1, x2, y2)`` per frame (pixel edges, x2/y2 exclusive) or None where no polyp is visible,
    ``label`` 1 with a polyp else 0, ``polyp_class`` (``adenomatous``/``hyperplastic``) and ``shape``."""

    frames: np.ndarray
    masks: np.ndarray
    boxes: list[Box | None]
    label: int
    polyp_class: str | None
    shape: str | None
    fps: float


def _size_hw(size: int | Sequence[int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h < 16 or w < 16 or h % 2 or w % 2:
        raise InputError(f"synthetic video size must be even and at least 16 pixels, got {h}x{w}")
    return int(h), int(w)


def mask_to_box(mask: np.ndarray) -> Box | None:
    """Box ``(x1, y1, x2, y2)`` enclosing a 2-D boolean mask (x2/y2 exclusive), or None when it is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _sample_periodic(grid: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Smooth (smoothstep-bilinear) lookup of a periodic 2-D grid at float coordinates in grid cells."""
    n_a, n_b = grid.shape
    a0, b0 = np.floor(a), np.floor(b)
    fa, fb = a - a0, b - b0
    fa = fa * fa * (3.0 - 2.0 * fa)
    fb = fb * fb * (3.0 - 2.0 * fb)
    i0 = a0.astype(np.int64) % n_a
    j0 = b0.astype(np.int64) % n_b
    i1, j1 = (i0 + 1) % n_a, (j0 + 1) % n_b
    top = grid[i0, j0] * (1 - fb) + grid[i0, j1] * fb
    bottom = grid[i1, j0] * (1 - fb) + grid[i1, j1] * fb
    return top * (1 - fa) + bottom * fa


def _shift(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Translate an [H, W, C] image by whole pixels, repeating the edge."""
    if dy == 0 and dx == 0:
        return img
    h, w = img.shape[:2]
    pad = max(abs(dy), abs(dx))
    padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    return padded[pad - dy : pad - dy + h, pad - dx : pad - dx + w]


@dataclass
class _Polyp:
    """A polyp on the tube wall and how it looks; :meth:`draw` paints it into one frame."""

    angle: float
    u0: float
    size: float
    axes: tuple[float, float]
    orient: float
    lobes: int
    lobe_phase: float
    irregular: float
    flat: bool
    colour: np.ndarray
    pit: np.ndarray
    texture_gain: float
    first_visible: int

    def draw(
        self,
        img: np.ndarray,
        mask: np.ndarray,
        xs: np.ndarray,
        ys: np.ndarray,
        light: np.ndarray,
        camera: tuple[float, float, float, float, float],
        half: float,
    ) -> None:
        """Blend the polyp into ``img`` [H, W, 3] and set its pixels in ``mask`` [H, W], in place."""
        cx, cy, zoom, roll, phase = camera
        pr = 1.0 / (self.u0 - phase)
        px = cx + zoom * pr * math.cos(self.angle + roll)
        py = cy + zoom * pr * math.sin(self.angle + roll)
        radius = self.size * pr * zoom
        # Only the pixels of a window around the polyp are touched.
        h, w = mask.shape
        reach = radius * max(self.axes) * (1.0 + self.irregular) * half + 2
        col, row = px * half + w / 2.0, py * half + h / 2.0
        r0, r1 = max(int(row - reach), 0), min(int(row + reach) + 1, h)
        c0, c1 = max(int(col - reach), 0), min(int(col + reach) + 1, w)
        if r0 >= r1 or c0 >= c1:
            return
        win = (slice(r0, r1), slice(c0, c1))
        qx, qy = (xs[win] - px) / radius, (ys[win] - py) / radius
        co, si = math.cos(self.orient + roll), math.sin(self.orient + roll)
        u, v = (co * qx + si * qy) / self.axes[0], (-si * qx + co * qy) / self.axes[1]
        d = np.hypot(u, v) / (1.0 + self.irregular * np.sin(self.lobes * np.arctan2(v, u) + self.lobe_phase))
        inside = d < 1.0
        height = np.sqrt(np.clip(1.0 - d**2, 0, 1)) * (0.5 if self.flat else 1.0)
        # Light comes from the camera: a specular spot on the side facing the screen centre.
        spot = np.exp(-((qx + 0.5 * px) ** 2 + (qy + 0.5 * py) ** 2) / (0.2 if self.flat else 0.06))
        pits = _sample_periodic(self.pit, u * 6, v * 6)
        dome = (0.6 + 0.4 * height) * (1.0 + self.texture_gain * (pits - 0.5))
        body = self.colour * (dome * light[win])[..., None] + (0.5 * spot * height)[..., None]
        alpha = np.clip((1.0 - d) * 6.0, 0, 1)[..., None]
        img[win] = img[win] * (1 - alpha) + body * alpha
        mask[win] = inside


def render_video(
    seed: int | Sequence[int],
    num_frames: int = 32,
    size: int | Sequence[int] = 128,
    polyp: bool | None = None,
    *,
    polyp_class: str | None = None,
    always_visible: bool = False,
    fps: float = 30.0,
) -> SyntheticVideo:
    """Render one endoscopy-like video.

    ``polyp=None`` draws presence with probability 0.5; ``polyp_class=None`` draws the class. With
    ``always_visible`` the polyp is in every frame, otherwise it may appear from behind a fold after the
    first few frames. ``size`` is the short side (square) or ``(height, width)``, even numbers only.
    """
    if num_frames < 1:
        raise InputError(f"num_frames must be at least 1, got {num_frames}")
    if polyp_class is not None and polyp_class not in POLYP_CLASSES:
        raise InputError(f"polyp_class must be one of {POLYP_CLASSES}, got {polyp_class!r}")
    h, w = _size_hw(size)
    rng = np.random.default_rng(seed)
    has_polyp = bool(rng.random() < 0.5) if polyp is None else bool(polyp)
    cls = (polyp_class or POLYP_CLASSES[int(rng.integers(2))]) if has_polyp else None

    # Screen coordinates in units of half the short side.
    half = min(h, w) / 2.0
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    xs = (xs + 0.5 - w / 2.0) / half
    ys = (ys + 0.5 - h / 2.0) / half
    vignette = np.clip(1.0 - rng.uniform(0.2, 0.35) * (xs**2 + ys**2), 0.2, 1.0).astype(np.float32)

    # Scene: wall texture in tube coordinates (angle turns x depth), folds, lumen, colours.
    ta, td = np.meshgrid(np.arange(_TEX_TURN) / _TEX_TURN, np.arange(_TEX_DEPTH) / 8.0, indexing="ij")
    low = _sample_periodic(rng.random((8, 16)), ta * 8, td * 2)
    high = _sample_periodic(rng.random((32, 64)), ta * 32, td * 8)
    wall = np.stack([low, high], axis=-1).astype(np.float32)
    wobble = rng.random(16)
    mucosa = rng.uniform(_MUCOSA_LOW, _MUCOSA_HIGH).astype(np.float32)
    grain = np.array([1.0, 1.4, 1.4], dtype=np.float32)
    fold_freq = rng.uniform(1.2, 2.0)
    fold_depth = rng.uniform(0.25, 0.45)
    lumen_radius = rng.uniform(0.1, 0.2)

    # Camera: speed along the lumen (in inverse-radius units per frame), drift, roll and zoom.
    t = np.arange(num_frames, dtype=np.float64)
    speed = rng.uniform(0.02, 0.06)
    end_radius = rng.uniform(0.55, 0.8)
    speed = min(speed, (3.0 - 1.0 / end_radius) / max(num_frames - 1, 1))
    phase = speed * t
    centre0 = rng.uniform(-0.25, 0.25, size=2)
    amp = rng.uniform(0.03, 0.12, size=2)
    freq = rng.uniform(0.05, 0.2, size=2)
    offs = rng.uniform(0, 2 * np.pi, size=2)
    cx = centre0[0] + amp[0] * np.sin(freq[0] * t + offs[0])
    cy = centre0[1] + amp[1] * np.sin(freq[1] * t + offs[1])
    roll = rng.uniform(0, 2 * np.pi) + rng.uniform(-0.03, 0.03) * t
    zoom = 1.0 + rng.uniform(0.0, 0.1) * np.sin(rng.uniform(0.05, 0.15) * t + rng.uniform(0, 2 * np.pi))
    blur = rng.uniform(0.0, 1.0, size=num_frames) < 0.3

    # Polyp: fixed on the wall at an angle and inverse radius, met as the camera advances.
    polyp_spec = None
    if has_polyp:
        shape = POLYP_SHAPES[int(rng.integers(len(POLYP_SHAPES)))]
        late = not always_visible and rng.random() < 0.25
        polyp_spec = _Polyp(
            angle=rng.uniform(0, 2 * np.pi),
            u0=1.0 / end_radius + speed * (num_frames - 1),
            size=rng.uniform(0.8, 1.1) * (0.85 if cls == "hyperplastic" else 1.0),
            axes={"round": (1.0, 1.0), "elongated": (1.5, 0.7), "sessile": (1.35, 1.15)}[shape],
            orient=rng.uniform(0, np.pi),
            lobes=int(rng.integers(3, 7)),
            lobe_phase=rng.uniform(0, 2 * np.pi),
            irregular=rng.uniform(0.02, 0.06),
            flat=shape == "sessile",
            colour=(_POLYP_COLOURS[cls][int(rng.integers(2))] * rng.uniform(0.92, 1.05)).astype(np.float32),
            pit=rng.random((24, 24)),
            texture_gain=0.3 if cls == "adenomatous" else 0.06,
            first_visible=int(rng.integers(1, num_frames // 4 + 2)) if late else 0,
        )
    else:
        shape = None

    frames = np.empty((num_frames, h, w, 3), dtype=np.uint8)
    masks = np.zeros((num_frames, h, w), dtype=bool)
    noise = rng.normal(0.0, 0.012, size=(num_frames, h, w, 1)).astype(np.float32)
    for i in range(num_frames):
        dx, dy = xs - np.float32(cx[i]), ys - np.float32(cy[i])
        r = np.hypot(dx, dy) / np.float32(zoom[i])
        turn = (np.arctan2(dy, dx) - np.float32(roll[i])) / np.float32(2 * np.pi)
        depth = 1.0 / np.maximum(r, 0.12) + np.float32(phase[i])
        ti = ((turn + 8.0) * _TEX_TURN).astype(np.int32) % _TEX_TURN
        texel = wall[ti, (depth * 8.0).astype(np.int32) % _TEX_DEPTH]
        wob = np.interp(turn * 16, np.arange(16), wobble, period=16).astype(np.float32)
        ring = np.cos(np.float32(2 * np.pi * fold_freq) * depth + 2.5 * wob)
        shade = 1.0 - np.float32(fold_depth) * ((1.0 - ring) * 0.5) ** 2
        lumen = 1.0 - 0.96 * np.exp(-((r / np.float32(lumen_radius)) ** 2))
        falloff = np.clip(r / 0.8, 0.3, 1.0) ** 0.7 * vignette
        light = (shade * lumen * falloff)[..., None]
        tint = 0.85 + 0.25 * texel[..., :1] + 0.12 * (texel[..., 1:] - 0.5) * grain
        img = mucosa * tint * light
        sparkle = np.clip((ring - 0.985) / 0.015, 0, 1) * (texel[..., 1] > 0.72) * (r > 2 * lumen_radius)
        img += sparkle[..., None] * 0.8

        if polyp_spec is not None and i >= polyp_spec.first_visible:
            polyp_spec.draw(img, masks[i], xs, ys, falloff, (cx[i], cy[i], zoom[i], roll[i], phase[i]), half)

        if blur[i]:
            sx = int(np.sign(cx[min(i + 1, num_frames - 1)] - cx[max(i - 1, 0)]))
            sy = int(np.sign(cy[min(i + 1, num_frames - 1)] - cy[max(i - 1, 0)]))
            img = (img + _shift(img, sy, sx) + _shift(img, 2 * sy, 2 * sx)) / 3.0
        frames[i] = np.clip((img + noise[i]) * 255.0, 0, 255).astype(np.uint8)

    return SyntheticVideo(
        frames=frames,
        masks=masks,
        boxes=[mask_to_box(m) for m in masks],
        label=int(has_polyp),
        polyp_class=cls,
        shape=shape,
        fps=fps,
    )
