"""The original KUMC detector (STFT, :mod:`endofm.models.detection.stft`) on videos: the test-time path.

Video inference follows the original's test path (``GeneralizedRCNNSTFT._forward_test``), computing each
frame's backbone and FPN features once: for frame ``f`` (1-based) the 19 queue positions hold frames
``f - 9 .. f + 9`` clamped to ``[1, L]`` (at the video start positions 0..9 are copies of frame 1 and 10..18
frames 2..10, a video shorter than the window repeats its last frame), the key frame sits at position 9, and
5 positions are drawn from 0..8 and 5 from 10..18 without replacement (``numpy`` ``choice``, left then right,
frame after frame). The original never seeds these draws, so its detections differ between runs; here they
come from ``numpy.random.RandomState(seed)``, so a run is repeatable.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from endofm.data.datasets.kumc import KUMCDataset, load_rgb, read_voc
from endofm.data.video import VideoReader
from endofm.engine.distributed import gather_shards, shard
from endofm.engine.logging import bar_off
from endofm.errors import ConfigError, InputError
from endofm.metrics.detection import coco_map, detection_metrics
from endofm.models.detection.stft import STFTDetector
from endofm.models.detection.transform import STFT_INPUT, resize_frames
from endofm.tasks.base import LoadedFinetuned
from endofm.tasks.detect.config import QUEUES, REFERENCES
from endofm.tasks.detect.data import MAX_OFFSET, MIN_OFFSET, TEST_REF_NUM
from endofm.tasks.detect.io import MODEL_NAME


def window_ids(frame: int, length: int) -> list[int]:
    """The 1-based frame ids at the 19 queue positions when ``frame`` (1-based) is the key: the original's
    queue, including its video-start rule, for a video of ``length`` frames."""
    return [min(max(frame + offset, 1), length) for offset in range(MIN_OFFSET, MAX_OFFSET + 1)]


def draw_references(rng: np.random.RandomState, ref_num: int = TEST_REF_NUM) -> tuple[list[int], list[int]]:
    """Queue positions of the references: ``ref_num // 2`` from the left of the key, then as many from the
    right, drawn as the original draws them (``choice`` without replacement, in this order)."""
    key = -MIN_OFFSET
    left = rng.choice(range(0, key), ref_num // 2, replace=False)
    right = rng.choice(range(key + 1, MAX_OFFSET - MIN_OFFSET + 1), ref_num // 2, replace=False)
    return [int(p) for p in left], [int(p) for p in right]


class VideoFeatures:
    """What the detector computes of each frame alone (the backbone on a one-frame clip, the FPN, the head's
    towers and box regression: :meth:`STFTFCOSHead.frame_parts`), computed once per frame and kept while a
    later key frame's window can still reach it."""

    def __init__(self, model: STFTDetector, read: Callable[[list[int]], torch.Tensor], length: int,
                 device: torch.device, chunk: int = 8) -> None:
        self.model, self.read, self.length, self.device, self.chunk = model, read, length, device, chunk
        self.cache: dict[int, list[torch.Tensor]] = {}
        self.computed = 0
        self.image_size = (0, 0)

    def get(self, ids: list[int]) -> list[dict[str, torch.Tensor]]:
        """Per level the head's parts ``[len(ids), ...]`` of 1-based frame ids (repeats allowed)."""
        missing = sorted(set(ids) - set(self.cache))
        while missing:
            batch = [i for i in range(missing[0], min(missing[0] + self.chunk, self.length + 1))
                     if i not in self.cache]
            frames = self.read(batch).to(self.device)
            self.image_size = (int(frames.shape[-2]), int(frames.shape[-1]))
            with torch.inference_mode():
                levels = self.model.head.frame_parts(self.model.frame_features(frames))
            for k, frame in enumerate(batch):
                self.cache[frame] = [{name: value[k : k + 1] for name, value in level.items()} for level in levels]
            self.computed += len(batch)
            missing = sorted(set(ids) - set(self.cache))
        return [{name: torch.cat([self.cache[i][level][name] for i in ids]) for name in self.cache[ids[0]][level]}
                for level in range(len(self.cache[ids[0]]))]

    def release_before(self, frame: int) -> None:
        """Forget frames no later window needs (ids below ``frame``)."""
        for old in [i for i in self.cache if i < frame]:
            del self.cache[old]


def detect_video(model: STFTDetector, read: Callable[[list[int]], torch.Tensor], length: int,
                 device: torch.device | str = "cpu", seed: int = 0, progress: bool = False,
                 references: str = "original") -> list[dict[str, Any]]:
    """Per frame (0-based order) the detections of the original test path: ``{"frame_ids"`` (1-based ids of
    the key and its references, in the head's order), ``"boxes"``, ``"scores"``, ``"labels"`` (1-based)}``.
    ``read(ids)`` returns the model's input frames ``[N, 3, H, W]`` for 1-based ids. ``references="past"``
    takes each reference the original draws ``k`` frames after the key ``k`` frames before it instead, as
    ``endofm stream`` does live (a measure of what causality costs)."""
    if length < 1:
        raise InputError("the video has no frames")
    if references not in REFERENCES:
        raise ConfigError(f"references must be one of {', '.join(REFERENCES)}, got {references!r}")
    device = torch.device(device)
    model = model.to(device).eval()
    rng = np.random.RandomState(seed)
    features = VideoFeatures(model, read, length, device)
    results = []
    for frame in tqdm(range(1, length + 1), desc="frames", unit="frame", disable=bar_off(progress)):
        window = window_ids(frame, length)
        left, right = draw_references(rng)
        if references == "past":  # queue position p is frame + p + MIN_OFFSET: mirror the later ones
            ids = [frame] + [max(1, frame - abs(p + MIN_OFFSET)) for p in [*left, *right]]
        else:
            ids = [window[-MIN_OFFSET]] + [window[p] for p in left] + [window[p] for p in right]
        stacked = features.get(ids)
        with torch.inference_mode():
            detections = model.detect_parts(stacked, features.image_size)["detections"]
        results.append({"frame_ids": ids, **{k: v.cpu() for k, v in detections.items()}})
        features.release_before(frame + MIN_OFFSET + 1)
    return results


def list_queue_windows(lengths: list[int]) -> list[list[int]]:
    """The original's queue read literally with its own list files, for videos of ``lengths`` frames run one
    after the other: per call (every frame of every video, in order) the 19 ids of the queue, numbered over
    the videos joined (1-based). The list writer puts 0 in the column the reader takes for the frame number,
    so the queue is built once, at the first call (the key 10 times, then frames 0+1 .. 0+9), and never reset:
    each later call pushes frame ``k + 9`` (clamped to its video) of the current video. The keys of frames
    2-10 of the first video lag one frame, and frames 1-9 of each later video take the previous video's last
    frame as key."""
    starts = np.cumsum([0, *lengths[:-1]]).tolist()
    queue = [1] * (1 - MIN_OFFSET) + [min(i, lengths[0]) for i in range(1, MAX_OFFSET + 1)]
    windows = [queue[:]]
    for video, length in enumerate(lengths):
        for frame in range(2 if video == 0 else 1, length + 1):
            queue = queue[1:] + [starts[video] + min(frame + MAX_OFFSET, length)]
            windows.append(queue)
    return windows


def detect_videos(model: STFTDetector, reads: list[Callable[[list[int]], torch.Tensor]], lengths: list[int],
                  device: torch.device | str = "cpu", seed: int = 0,
                  queue: str = "video", progress: bool = False,
                  references: str = "original") -> list[list[dict[str, Any]]]:
    """:func:`detect_video` of several videos: ``queue="video"`` resets the queue (and the reference draws'
    seed) at each video's start (:func:`window_ids`); ``queue="list"`` keeps one queue and one draw stream over
    the videos, as the original with its own list files (:func:`list_queue_windows`)."""
    if queue not in QUEUES:
        raise ConfigError(f"stft.queue must be one of {', '.join(QUEUES)}, got {queue!r}")
    if queue == "video":
        videos = tqdm(list(zip(reads, lengths, strict=True)), desc="evaluate", unit="video", disable=bar_off(progress))
        return [detect_video(model, read, length, device, seed, references=references) for read, length in videos]
    if references != "original":
        raise ConfigError("references=past reads each video alone (queue=video)")
    starts = np.cumsum([0, *lengths[:-1]]).tolist()

    def read_joined(ids: list[int]) -> torch.Tensor:
        owner = [int(np.searchsorted(starts, i - 1, side="right")) - 1 for i in ids]
        return torch.cat([reads[v]([i - starts[v]]) for v, i in zip(owner, ids, strict=True)])

    device = torch.device(device)
    model = model.to(device).eval()
    rng = np.random.RandomState(seed)
    features = VideoFeatures(model, read_joined, sum(lengths), device)
    results: list[list[dict[str, Any]]] = [[] for _ in lengths]
    calls = [(v, k) for v, length in enumerate(lengths) for k in range(length)]
    steps = tqdm(list(zip(calls, list_queue_windows(lengths), strict=True)), desc="evaluate", unit="frame",
                 disable=bar_off(progress))
    for (video, _), window in steps:
        left, right = draw_references(rng)
        ids = [window[-MIN_OFFSET]] + [window[p] for p in left] + [window[p] for p in right]
        with torch.inference_mode():
            detections = model.detect_parts(features.get(ids), features.image_size)["detections"]
        results[video].append({"frame_ids": [i - starts[video] for i in ids],
                               **{k: v.cpu() for k, v in detections.items()}})
        features.release_before(min(window))
    return results


def predict_stft(loaded: LoadedFinetuned, reader: VideoReader, device: torch.device, score_threshold: float = 0.5,
                 seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """Boxes (input-video pixels) scoring at least ``score_threshold`` for every frame of a video."""
    spec = loaded.input_spec
    height, width = spec.size
    model: STFTDetector = loaded.model  # type: ignore[assignment]

    def read(ids: list[int]) -> torch.Tensor:
        return spec.normalize(resize_frames(reader.read([i - 1 for i in ids]), (height, width))).transpose(0, 1)

    classes = loaded.metadata.get("classes") or list(KUMCDataset.classes)
    per_frame = detect_video(model, read, len(reader), device, seed, progress)
    sy, sx = reader.info.height / height, reader.info.width / width
    frames = []
    for k, det in enumerate(per_frame):
        keep = det["scores"] >= score_threshold
        boxes = (det["boxes"][keep] * torch.tensor([sx, sy, sx, sy])).tolist()
        frames.append({"frame": k, "time": k / reader.info.fps,
                       "reference_frames": [i - 1 for i in det["frame_ids"][1:]],
                       "boxes": [{"box": box, "score": float(score), "label": classes[int(label) - 1]}
                                 for box, score, label in zip(boxes, det["scores"][keep].tolist(),
                                                              det["labels"][keep].tolist(), strict=True)]})
    return {"score_threshold": score_threshold, "detector": MODEL_NAME, "reference_seed": seed,
            "input_size": [height, width], "frames": frames}


def clip_to_image(boxes: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """xyxy ``boxes`` clamped to ``[0, width - 1] x [0, height - 1]`` and the mask of those left non-empty: the
    original's ``BoxList.clip_to_image(remove_empty=True)`` of the detections scaled back to the frame (its
    ground truth is clamped alike when read, and kept)."""
    limits = torch.tensor([width - 1, height - 1] * 2, dtype=boxes.dtype)
    clipped = torch.minimum(boxes.clamp(min=0), limits)
    return clipped, (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])


def evaluate_stft(model: STFTDetector, root: str | os.PathLike, split: str, size: int | tuple[int, int] = 640,
                  device: torch.device | str = "cpu", seed: int = 0, score_threshold: float = 0.5,
                  queue: str = "video", progress: bool = False, references: str = "original") -> dict[str, Any]:
    """Metrics of the original test path on a KUMC-layout split: every video run through :func:`detect_video`
    (its queue, its references), boxes scaled back to the frames' size, scored on the annotated frames: the
    original's frame-level F1 at ``score_threshold``, box-level P/R/F1 at IoU 0.5, COCO mAP, and the COCO AP
    at IoU 0.5 of polyp boxes whatever their class (``map_50_class_agnostic``). Boxes are clamped to the frame
    and detections left empty dropped (:func:`clip_to_image`), as the original's evaluation. ``queue`` as
    :func:`detect_videos` says (``list``: every video of the split, in order, through one queue)."""
    index = KUMCDataset(root, split, skip_unannotated=True)
    input_h, input_w = (size, size) if isinstance(size, int) else size
    annotated: dict[int, dict[int, Path]] = {}
    for v, k, xml in index.samples:
        annotated.setdefault(v, {})[k] = xml
    predictions, truths = [], []
    videos = [v for v in range(len(index.videos)) if v in annotated or queue == "list"]

    def reader(paths: list[Path]) -> Callable[[list[int]], torch.Tensor]:
        return lambda ids: STFT_INPUT.normalize(resize_frames(np.stack([load_rgb(paths[i - 1]) for i in ids]),
                                                              size)).transpose(0, 1)

    mine = videos if queue == "list" else [videos[i] for i in shard(len(videos))]  # one queue: not shared out
    detected = detect_videos(model, [reader(index.videos[v][1]) for v in mine],
                             [len(index.videos[v][1]) for v in mine], device, seed, queue, progress, references)
    if queue != "list":
        detected = gather_shards(detected)
    for v, per_frame in zip(videos, detected, strict=True):
        for k, xml in sorted(annotated.get(v, {}).items()):
            boxes, labels, (height, width) = read_voc(xml, KUMCDataset.classes)
            det = per_frame[k]
            scale = torch.tensor([width / input_w, height / input_h] * 2)
            pred, keep = clip_to_image(det["boxes"] * scale, height, width)
            predictions.append({"boxes": pred[keep], "scores": det["scores"][keep], "labels": det["labels"][keep] - 1})
            truths.append({"boxes": clip_to_image(boxes, height, width)[0], "labels": labels})
    agnostic = coco_map([{**p, "labels": torch.zeros_like(p["labels"])} for p in predictions],
                        [{**t, "labels": torch.zeros_like(t["labels"])} for t in truths], 1)
    return {**detection_metrics(predictions, truths, len(KUMCDataset.classes), score_threshold=score_threshold),
            "map_50_class_agnostic": agnostic["map_50"], "frames": len(truths)}


def evaluate_loaded_stft(loaded: LoadedFinetuned, root: str | os.PathLike, split: str = "test",
                         device: torch.device | str = "cpu", seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """:func:`evaluate_stft` of a detector read by ``endofm.load_finetuned`` (a released ``kumc.pth`` or a
    folder), at its own input size."""
    return evaluate_stft(loaded.model, root, split, loaded.input_spec.size, device, seed,  # type: ignore[arg-type]
                         progress=progress)


@dataclass(frozen=True)
class STFTSplit:
    """A KUMC-layout split as the test-time path reads it: the evaluation set of
    :class:`~endofm.tasks.detect.stft_train.STFTRecipe` (whole videos, not samples)."""

    root: str
    split: str
    size: int = 640
    seed: int = 0
    """Seed of the reference draws."""
    queue: str = "video"


def evaluate_split(model: STFTDetector, split: STFTSplit, batch_size: int = 1, device: torch.device | str = "cpu",
                   num_workers: int = 0) -> dict[str, Any]:
    """:func:`evaluate_stft` of a split, with the signature of
    :attr:`FinetuneRecipe.evaluator <endofm.tasks.finetune.FinetuneRecipe.evaluator>`: the video path reads
    its frames one key at a time in this process, so ``batch_size`` and ``num_workers`` do not apply. The
    model is left in the mode it came in."""
    was_training = model.training
    try:
        return evaluate_stft(model, split.root, split.split, split.size, device, split.seed, queue=split.queue)
    finally:
        model.train(was_training)
