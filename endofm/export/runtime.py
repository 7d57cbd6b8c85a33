"""Exported models (``endofm export``) in ONNX Runtime, without PyTorch: this module, the stream's loop and
predictors (:mod:`endofm.stream`) and their pre- and post-processing import numpy, PIL, PyAV and
``onnxruntime`` only.

:func:`read_info` tells what an exported file is (the ``endofm`` metadata entry) and :func:`load_exported`
runs it (its causal predictor for a stream: :func:`endofm.stream.onnx_nets.onnx_predictor`);
:func:`stft_postprocess` is the STFT detector's post-processing, the original's, in numpy (the step after the
exported head).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from endofm.errors import ExportError, InputError

LEVELS = ("p3", "p4", "p5", "p6", "p7")
POSTPROCESS = {"score_thresh": 0.05, "pre_nms_top_n": 1000, "nms_thresh": 0.6, "detections_per_img": 300,
               "bbox_std": (0.5, 0.5, 0.5, 0.5)}
"""The original's STFT test settings (as :class:`endofm.models.detection.stft_postprocess.PostprocessConfig`)."""


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as error:
        raise ExportError("running an exported model needs onnxruntime: pip install 'endofm[onnx]'") from error
    return onnxruntime


def _options() -> Any:
    options = _ort().SessionOptions()
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads and threads.isdigit():  # the package's CPU setting, as PyTorch takes it
        options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    return options


def session_from_bytes(data: bytes, quiet: bool = True) -> Any:
    """An ONNX Runtime CPU session of a model in memory (``quiet``: its own error log off, the caller reports)."""
    options = _options()
    if quiet:
        options.log_severity_level = 4
    return _ort().InferenceSession(data, options, providers=["CPUExecutionProvider"])


def open_session(path: str | os.PathLike, providers: Sequence[str] | None = None) -> Any:
    """An ONNX Runtime session of ``path`` (CPU unless ``providers`` says otherwise), or an
    :class:`ExportError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such ONNX file")
    try:
        return _ort().InferenceSession(str(path), _options(), providers=list(providers or ["CPUExecutionProvider"]))
    except ExportError:
        raise
    except Exception as error:  # noqa: BLE001 - ONNX Runtime raises its own types for unreadable files
        raise ExportError(f"{path}: not a readable ONNX model: {str(error).splitlines()[0]}") from error


def read_info(session: Any, path: str | os.PathLike) -> dict[str, Any]:
    """The ``endofm`` metadata of an exported model (kind, task, input, ...), or an :class:`ExportError` when
    the file was not made by ``endofm export``."""
    raw = session.get_modelmeta().custom_metadata_map.get("endofm")
    try:
        info = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        info = None
    if not isinstance(info, dict) or info.get("format") != "endofm-onnx":
        raise ExportError(f"{path}: an ONNX model not made by endofm export (no endofm metadata); export the "
                          "model with endofm export first")
    return info


class OnnxNet:
    """numpy in, numpy out: one input, one output."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.input = session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: np.ascontiguousarray(x, dtype=np.float32)})[0]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression (IoU above ``threshold`` suppressed, areas without the
    ``+ 1``, as ``torchvision.ops.nms``), highest score first."""
    order = np.argsort(-scores, kind="stable")
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        x1 = np.maximum(boxes[best, 0], boxes[rest, 0])
        y1 = np.maximum(boxes[best, 1], boxes[rest, 1])
        x2 = np.minimum(boxes[best, 2], boxes[rest, 2])
        y2 = np.minimum(boxes[best, 3], boxes[rest, 3])
        inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
        iou = inter / (area[best] + area[rest] - inter)
        order = rest[~(iou > threshold)]
    return np.asarray(keep, dtype=np.int64)


def stft_postprocess(outputs: Mapping[str, Sequence[np.ndarray]], image_size: tuple[int, int],
                     config: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """The key frame's detections from the exported head's outputs (per level ``cls_logits``,
    ``centerness``, ``stft_cls_logits``, ``stft_bbox_reg``, ``pre_bbox``): the original's post-processing
    (:mod:`endofm.models.detection.stft_postprocess`) in numpy. ``{"boxes" [N, 4] xyxy, "scores", "labels"
    (1-based)}``."""
    cfg = {**POSTPROCESS, **(config or {})}
    all_boxes, all_scores, all_labels = [], [], []
    for cls_logits, centerness, stft_cls, stft_reg, pre_bbox in zip(
            outputs["cls_logits"], outputs["centerness"], outputs["stft_cls_logits"], outputs["stft_bbox_reg"],
            outputs["pre_bbox"], strict=True):
        def major(x: np.ndarray) -> np.ndarray:
            return x[0].reshape(x.shape[1], -1).T

        prob = np.sqrt(_sigmoid(major(cls_logits)) * _sigmoid(major(centerness)))
        keep = prob > cfg["score_thresh"]
        scored = (prob * _sigmoid(major(stft_cls)))[keep]
        order = np.argsort(-scored, kind="stable")[: cfg["pre_nms_top_n"]]
        pairs = np.argwhere(keep)[order]
        locations, labels = pairs[:, 0], pairs[:, 1] + 1
        base = pre_bbox[0][locations]
        deltas = major(stft_reg)[locations]
        size = np.tile(base[:, 2:] - base[:, :2], (1, 2))
        all_boxes.append(base + deltas * np.asarray(cfg["bbox_std"], dtype=base.dtype) * size)
        all_scores.append(np.sqrt(scored[order]))
        all_labels.append(labels)
    boxes, scores, labels = np.concatenate(all_boxes), np.concatenate(all_scores), np.concatenate(all_labels)
    kept = [index for label in np.unique(labels)
            for index in np.flatnonzero(labels == label)[nms(boxes[labels == label], scores[labels == label],
                                                             cfg["nms_thresh"])]]
    kept = np.asarray(sorted(kept, key=lambda i: -scores[i]), dtype=np.int64)
    boxes, scores, labels = boxes[kept].reshape(-1, 4), scores[kept], labels[kept]
    limit = cfg["detections_per_img"]
    if scores.size > limit > 0:
        threshold = np.sort(scores)[scores.size - limit]
        keep = scores >= threshold
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    height, width = image_size
    boxes = np.stack((boxes[:, 0].clip(0, width - 1), boxes[:, 1].clip(0, height - 1),
                      boxes[:, 2].clip(0, width - 1), boxes[:, 3].clip(0, height - 1)), axis=1)
    keep = (boxes[:, 2] - boxes[:, 0] + 1 >= 0) & (boxes[:, 3] - boxes[:, 1] + 1 >= 0)
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


class OnnxDetector:
    """The exported STFT detector's two parts (:class:`~endofm.stream.steps.DetectorNet`)."""

    def __init__(self, frame_session: Any, head_session: Any, postprocess: Mapping[str, Any] | None = None) -> None:
        self.frame_session, self.head_session = frame_session, head_session
        self.head_inputs = [i.name for i in head_session.get_inputs()]
        self.head_outputs = [o.name for o in head_session.get_outputs()]
        self.postprocess = dict(postprocess or {})

    def frame(self, x: np.ndarray) -> list[np.ndarray]:
        return self.frame_session.run(None, {"frames": np.ascontiguousarray(x, dtype=np.float32)})

    def head(self, parts: Sequence[list[np.ndarray]]) -> dict[str, list[np.ndarray]]:
        """The head's outputs by name, per level, of the key frame's and its references' parts."""
        feeds = {name: np.concatenate([p[k] for p in parts]) for k, name in enumerate(self.head_inputs)}
        results = dict(zip(self.head_outputs, self.head_session.run(None, feeds), strict=True))
        names = ("cls_logits", "centerness", "stft_cls_logits", "stft_bbox_reg", "pre_bbox")
        return {name: [results[f"{level}_{name}"] for level in LEVELS] for name in names}

    def detect(self, parts: Sequence[list[np.ndarray]], image_size: tuple[int, int]) -> dict[str, np.ndarray]:
        return stft_postprocess(self.head(parts), image_size, self.postprocess)


def load_exported(path: str | os.PathLike, providers: Sequence[str] | None = None) -> tuple[dict[str, Any], Any]:
    """The metadata and the runnable network of an exported file: :class:`OnnxNet` (backbone, classifier,
    segmenter) or :class:`OnnxDetector` (the STFT detector: give its per-frame file; the head file beside it is
    read too)."""
    path = Path(path)
    session = open_session(path, providers)
    info = read_info(session, path)
    if info["kind"] == "detect-head":
        raise ExportError(f"{path}: the STFT detector's head part; give its per-frame file "
                          f"({path.name.removesuffix('.head.onnx').removesuffix('.head.int8.onnx')}.onnx)")
    if info["kind"] == "detect-frame":
        head_file = path.with_name(info["head"])
        head = open_session(head_file, providers)
        head_info = read_info(head, head_file)
        if head_info.get("kind") != "detect-head" or head_info.get("source") != info.get("source"):
            raise ExportError(f"{head_file}: not the head exported with {path}; export the detector again")
        return info, OnnxDetector(session, head, (info.get("metadata") or {}).get("postprocess"))
    return info, OnnxNet(session)
