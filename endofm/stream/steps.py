"""Causal predictors: a frame pushed in gives that frame's prediction out, from it and earlier frames only.

Each predictor keeps what it needs of the past in a bounded queue and runs a network through a small
adaptor (``net``), so the same code serves a PyTorch model (:mod:`endofm.stream.torch_nets`) and an exported
ONNX model (:mod:`endofm.export.runtime`); this module does not import PyTorch.

- :class:`WindowClassifier`: the last ``span`` frames, ``frames`` of them evenly spaced (the latest
  included), give the polyp probability of the newest frame.
- :class:`WindowSegmenter`: the last ``window`` frames as one clip; the newest frame's mask.
- :class:`WindowEmbedder`: the last ``window`` frames as one clip; its embedding.
- :class:`PastDetector`: the STFT detector with references from the past only (:func:`past_positions`);
  each frame's backbone, FPN and head towers are computed once and kept for the 9 frames after it.

Frames dropped by a live source never reach a predictor: windows and references are over the frames it
was given.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from endofm.errors import InputError
from endofm.stream.frames import prepare, softmax

STFT_REACH, STFT_REFERENCES = 9, 10
DEFAULT_SEGMENT_WINDOW = 8
"""Frames per clip of a segmenter that takes any count (the TransUNet), when none is asked for."""
"""The original STFT test path: references within 9 frames of the key, 10 of them (5 before, 5 after)."""


class CausalPredictor(Protocol):
    """What the stream runs: ``push(frame)`` -> the newest frame's prediction (JSON-ready) and its arrays."""

    task: str

    def push(self, frame: np.ndarray) -> tuple[dict[str, Any], dict[str, np.ndarray]]: ...

    def reset(self) -> None: ...


def refuse_options(task: str, window: int | None, seed: int | None, score_threshold: float | None) -> None:
    """An :class:`InputError` for an option the task's predictor does not take (options are applied or
    refused): ``window`` is not the detector's, ``seed`` and ``score_threshold`` are the detector's only."""
    given = [name for name, value in (("window", window),) if value is not None and task == "detect"]
    given += [name for name, value in (("reference seed", seed), ("score threshold", score_threshold))
              if value is not None and task != "detect"]
    if given:
        raise InputError(f"the {task} predictor takes no {' or '.join(given)} option")


def evenly_spaced(count: int, frames: int) -> list[int]:
    """``frames`` indices spread evenly over ``[0, count - 1]`` (repeats when ``count < frames``)."""
    return np.linspace(0, count - 1, frames).round().astype(int).tolist()


class _Window:
    """The last ``size`` prepared frames."""

    def __init__(self, spec: Mapping[str, Any], size: int) -> None:
        self.spec, self.frames = dict(spec), deque(maxlen=max(1, size))

    def add(self, frame: np.ndarray) -> None:
        self.frames.append(prepare(frame, self.spec))

    def clip(self, indices: Sequence[int] | None = None) -> np.ndarray:
        """``[1, 3, T, H, W]`` of the frames at ``indices``, oldest first; by default the whole window, the
        first frame repeated before it while fewer frames than its size have come (the original's rule at a
        video's start)."""
        if indices is None:
            missing = self.frames.maxlen - len(self.frames)
            chosen = [self.frames[0]] * missing + list(self.frames)
        else:
            chosen = [self.frames[i] for i in indices]
        return np.stack(chosen, axis=1)[None]


class WindowClassifier:
    """The polyp probability of the newest frame from a window of the past (see the module docstring)."""

    task = "classify"

    def __init__(self, net: Callable[[np.ndarray], np.ndarray], spec: Mapping[str, Any], frames: int,
                 classes: Sequence[str] = ("normal", "abnormal"), span: int | None = None) -> None:
        self.net, self.num_frames, self.classes = net, frames, list(classes)
        self.window = _Window(spec, span or 4 * frames)

    def reset(self) -> None:
        self.window.frames.clear()

    def push(self, frame: np.ndarray) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        self.window.add(frame)
        clip = self.window.clip(evenly_spaced(len(self.window.frames), self.num_frames))
        probs = softmax(np.asarray(self.net(clip), dtype=np.float64))[0]
        p = float(probs[1]) if probs.size > 1 else float(probs[0])
        return {"polyp_probability": p, "label": self.classes[int(p >= 0.5)],
                "probabilities": dict(zip(self.classes, probs.tolist(), strict=False))}, {}


class WindowSegmenter:
    """The newest frame's mask (at the model's input size) from a clip of the last ``window`` frames."""

    task = "segment"

    def __init__(self, net: Callable[[np.ndarray], np.ndarray], spec: Mapping[str, Any], window: int) -> None:
        self.net, self.window = net, _Window(spec, window)

    def reset(self) -> None:
        self.window.frames.clear()

    def push(self, frame: np.ndarray) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        height, width = frame.shape[:2]
        self.window.add(frame)
        logits = np.asarray(self.net(self.window.clip()))
        mask = logits[0, :, -1].argmax(0).astype(np.uint8)
        sy, sx = height / mask.shape[0], width / mask.shape[1]
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        box = [float(cols[0] * sx), float(rows[0] * sy), float((cols[-1] + 1) * sx),
               float((rows[-1] + 1) * sy)] if rows.size else None
        return {"polyp_fraction": float(mask.mean()), "box": box}, {"mask": mask}


class WindowEmbedder:
    """The embedding of a clip of the last ``window`` frames."""

    task = "embed"

    def __init__(self, net: Callable[[np.ndarray], np.ndarray], spec: Mapping[str, Any], window: int) -> None:
        self.net, self.window = net, _Window(spec, window)

    def reset(self) -> None:
        self.window.frames.clear()

    def push(self, frame: np.ndarray) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        self.window.add(frame)
        embedding = np.asarray(self.net(self.window.clip()), dtype=np.float32)[0]
        return {"embedding": [round(float(v), 6) for v in embedding]}, {}


def past_positions(rng: np.random.RandomState) -> list[int]:
    """Offsets (negative: frames before the key) of the 10 references of one key frame, past only.

    The draws are the original's (5 of the 9 queue positions left of the key, then 5 of the 9 right of it,
    ``choice`` without replacement, in this order, from the same generator); a position right of the key,
    ``+k`` frames in the original, becomes ``-k``. So each reference is as far from the key as in the
    original, on the past side."""
    left = rng.choice(range(0, STFT_REACH), STFT_REFERENCES // 2, replace=False)
    right = rng.choice(range(STFT_REACH + 1, 2 * STFT_REACH + 1), STFT_REFERENCES // 2, replace=False)
    return [int(p) - STFT_REACH for p in left] + [STFT_REACH - int(p) for p in right]


class DetectorNet(Protocol):
    """The STFT detector in its two parts: ``frame(x [1, 3, H, W])`` -> the frame's per-frame part (kept in the
    queue), ``detect(parts, image_size)`` -> ``{"boxes" [N, 4], "scores" [N], "labels" [N]}`` (numpy) of the
    first of ``parts`` with the others as references."""

    def frame(self, x: np.ndarray) -> Any: ...

    def detect(self, parts: Sequence[Any], image_size: tuple[int, int]) -> dict[str, np.ndarray]: ...


class PastDetector:
    """The STFT detector on a live stream: references from the 9 frames before the key only
    (:func:`past_positions`; at the start, frames before the first are the first, as the original's queue
    rule), each frame's part computed once (see the module docstring). ``seed`` seeds the draws."""

    task = "detect"

    def __init__(self, net: DetectorNet, spec: Mapping[str, Any], classes: Sequence[str], seed: int = 0,
                 score_threshold: float = 0.5) -> None:
        self.net, self.spec, self.classes = net, dict(spec), list(classes)
        self.seed, self.score_threshold = seed, score_threshold
        self.reset()

    def reset(self) -> None:
        self.rng = np.random.RandomState(self.seed)
        self.queue: deque[tuple[int, Any]] = deque(maxlen=STFT_REACH + 1)
        self.count = 0

    def push(self, frame: np.ndarray) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        height, width = frame.shape[:2]
        x = prepare(frame, self.spec)[None]
        self.queue.append((self.count, self.net.frame(x)))
        key = self.count
        self.count += 1
        held = dict(self.queue)
        first = min(held)
        ids = [key] + [max(key + offset, first) for offset in past_positions(self.rng)]
        found = self.net.detect([held[i] for i in ids], (x.shape[-2], x.shape[-1]))
        sy, sx = height / x.shape[-2], width / x.shape[-1]
        keep = found["scores"] >= self.score_threshold
        boxes = (np.asarray(found["boxes"])[keep] * np.array([sx, sy, sx, sy])).tolist()
        detections = [{"box": [float(v) for v in box], "score": float(score), "label": self.classes[int(label) - 1]}
                      for box, score, label in zip(boxes, np.asarray(found["scores"])[keep].tolist(),
                                                   np.asarray(found["labels"])[keep].tolist(), strict=True)]
        return {"boxes": detections, "reference_offsets": [i - key for i in ids[1:]]}, {}
