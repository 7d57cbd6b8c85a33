"""The original KUMC detector (STFT, :mod:`endofm.models.stft`) as a task: loading, saving, video inference.

Video inference follows the original's test path (``GeneralizedRCNNSTFT._forward_test``), computing each
frame's backbone and FPN features once: for frame ``f`` (1-based) the 19 queue positions hold frames
``f - 9 .. f + 9`` clamped to ``[1, L]`` (at the video start positions 0..9 are copies of frame 1 and 10..18
frames 2..10, a video shorter than the window repeats its last frame), the key frame sits at position 9, and
5 positions are drawn from 0..8 and 5 from 10..18 without replacement (``numpy`` ``choice``, left then right,
frame after frame). The original never seeds these draws, so its detections differ between runs; here they
come from ``numpy.random.RandomState(seed)``, so a run is repeatable.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file as save_safetensors
from torch import nn
from tqdm import tqdm

from endofm.data.datasets.kumc import POLYP_CLASSES
from endofm.data.video import VideoReader
from endofm.engine.distributed import gather_shards, shard
from endofm.engine.logging import bar_off, plot_curves
from endofm.errors import CheckpointError, ConfigError, InputError, TrainingError
from endofm.io import atomic_write, atomic_write_text
from endofm.models.backbone import EndoFMBackbone
from endofm.models.checkpoint import CONFIG_FILE, FORMAT_NAME, FORMAT_VERSION, WEIGHTS_FILE
from endofm.models.inputs import InputSpec
from endofm.models.stft import (
    CAFFE_MEAN_BGR,
    STFTConfig,
    STFTDetector,
    is_stft_state,
    resize_frames,
    stft_from_state,
)
from endofm.tasks.base import LoadedFinetuned, ReleasedLayout
from endofm.tasks.finetune import FinetuneRecipe, build_backbone, is_better, run_finetune
from endofm.tasks.folder import read_model_folder
from endofm.tasks.results import json_safe

MODEL_NAME = "stft"
STFT_INPUT = InputSpec(size=(640, 640), frames=None, channel_order="BGR", mean=CAFFE_MEAN_BGR, std=(1.0, 1.0, 1.0),
                       value_scale=255.0, resize="stretch")
"""The original KUMC input: 640 x 640 (stretched, PIL bilinear), BGR, 0-255 minus the Caffe mean, std 1; the
key frame and its references, each through the backbone alone."""
MIN_OFFSET, MAX_OFFSET, TEST_REF_NUM = -9, 9, 10


def matches_released(state: dict[str, Any]) -> bool:
    """Whether a checkpoint's top-level dict is the released KUMC layout (``{"model": STFT state, ...}``) or a
    bare STFT state dict."""
    return is_stft_state(state)


def load_released(state: dict[str, Any], path: Path, num_heads: int | None) -> LoadedFinetuned:
    """The released ``kumc.pth`` layout: only ``model`` is read (``optimizer``, ``scheduler`` and
    ``iteration`` are the training state)."""
    model_state = state["model"] if isinstance(state.get("model"), dict) else state
    model = stft_from_state(model_state, num_heads, str(path))
    iteration = state.get("iteration")
    return LoadedFinetuned("detect", model, STFT_INPUT, str(path), MODEL_NAME,
                           {"source": "original KUMC STFT detector", "classes": list(POLYP_CLASSES),
                            "iteration": iteration if isinstance(iteration, int) else None,
                            "num_heads": model.config.backbone.num_heads})


def save_folder(directory: str | os.PathLike, model: STFTDetector, spec: InputSpec = STFT_INPUT,
                metadata: dict[str, Any] | None = None) -> Path:
    """The detector in the package's folder format: ``model.safetensors`` (the original's key names) and
    ``config.json`` (``model: stft``, its sizes at inference, ``metadata`` with ``task: detect`` and the input
    spec), each written atomically, the weights first."""
    directory = Path(directory)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {"task": "detect", "input": spec.to_dict(), "classes": list(POLYP_CLASSES), **(metadata or {})}
    config = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "model": MODEL_NAME,
              "stft": inference_config(model.config).to_dict(),
              "metadata": meta}
    atomic_write(directory / WEIGHTS_FILE, lambda tmp: save_safetensors(tensors, tmp, metadata={"format": "pt"}))
    atomic_write_text(directory / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    return directory


def save_released(loaded: LoadedFinetuned, directory: Path) -> Path:
    """``endofm convert`` of a released STFT checkpoint."""
    return save_folder(directory, loaded.model, loaded.input,  # type: ignore[arg-type]
                       {"converted_from": loaded.path, "iteration": loaded.metadata.get("iteration")})


def load_folder(directory: Path, config: dict[str, Any]) -> LoadedFinetuned:
    """A folder written by :func:`save_folder`."""
    sizes, metadata, spec, state = read_model_folder(directory, config, "stft", STFTConfig.from_dict, STFT_INPUT)
    model = stft_from_state(state, sizes.backbone.num_heads, str(directory / WEIGHTS_FILE))
    if model.config != sizes:
        raise CheckpointError(f"{directory / CONFIG_FILE}: the recorded sizes {sizes} differ from the weights' "
                              f"{model.config}")
    return LoadedFinetuned("detect", model, spec, str(directory), "endofm-stft", metadata)


LAYOUT = ReleasedLayout(MODEL_NAME, matches_released, load_released, save_released, load_folder)
"""The released ``kumc.pth`` and its package folder."""


# --- video inference ----------------------------------------------------------------------------------------


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


REFERENCES = ("original", "past")


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


QUEUES = ("video", "list")


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
    spec = loaded.input
    height, width = spec.size
    model: STFTDetector = loaded.model  # type: ignore[assignment]

    def read(ids: list[int]) -> torch.Tensor:
        return spec.normalize(resize_frames(reader.read([i - 1 for i in ids]), (height, width))).transpose(0, 1)

    classes = loaded.metadata.get("classes") or list(POLYP_CLASSES)
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


# --- training as the original --------------------------------------------------------------------------------


class STFTTrainFrames(torch.utils.data.Dataset):
    """Training samples of the original: the key frame, one reference 1-9 frames before it and one 1-9 after
    it (ids clamped to the video), all resized to ``size`` x ``size`` (PIL bilinear), flipped together with
    probability ``hflip`` and normalised as :data:`STFT_INPUT`. Boxes are clipped to the image (empty ones
    dropped), scaled to the input and flipped with the original's ``+ 1`` convention; labels are 1-based.
    Draws come from torch's generator (seeded per sample in training: :class:`~endofm.tasks.finetune.KeyedSamples`)."""

    def __init__(self, root: str | os.PathLike, split: str = "train", size: int = 640, hflip: float = 0.5,
                 skip_empty: bool = False) -> None:
        from endofm.data.datasets.kumc import KUMCDataset, read_voc

        self.index = KUMCDataset(root, split, skip_unannotated=True)
        self.size, self.hflip = size, hflip
        if skip_empty:  # stft.empty_frames=leave_out
            self.index.samples = [s for s in self.index.samples if len(read_voc(s[2], POLYP_CLASSES)[0])]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> dict[str, Any]:
        from endofm.data.datasets.kumc import _load_rgb, read_voc

        v, k, xml = self.index.samples[item]
        _, paths = self.index.videos[v]
        left = int(torch.randint(MIN_OFFSET, 0, ()))
        right = int(torch.randint(1, MAX_OFFSET + 1, ()))
        ids = [k] + [min(max(k + offset, 0), len(paths) - 1) for offset in (left, right)]
        frames = np.stack([_load_rgb(paths[i]) for i in ids])
        boxes, labels, (height, width) = read_voc(xml, POLYP_CLASSES)
        boxes = torch.stack((boxes[:, 0].clamp(0, width - 1), boxes[:, 1].clamp(0, height - 1),
                             boxes[:, 2].clamp(0, width - 1), boxes[:, 3].clamp(0, height - 1)), dim=1)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, labels = boxes[keep], labels[keep] + 1
        resized = resize_frames(frames, self.size)
        boxes = boxes * torch.tensor([self.size / width, self.size / height] * 2)
        if float(torch.rand(())) < self.hflip:
            resized = resized.flip(-1)
            boxes = torch.stack((self.size - boxes[:, 2] - 1, boxes[:, 1], self.size - boxes[:, 0] - 1, boxes[:, 3]),
                                dim=1)
        return {"frames": STFT_INPUT.normalize(resized).transpose(0, 1), "boxes": boxes, "labels": labels,
                "meta": {"path": str(paths[k]), "frame_ids": [i + 1 for i in ids]}}


def original_optimizer(model: STFTDetector, lr: float = 0.0025, weight_decay: float = 1e-4, momentum: float = 0.9,
                       bias_lr_factor: float = 2.0, weight_decay_bias: float = 0.0) -> torch.optim.SGD:
    """The original's SGD: one group per parameter, biases at ``bias_lr_factor`` x lr with
    ``weight_decay_bias``, every other parameter (norms and embeddings included) with ``weight_decay``."""
    groups = [{"params": [p], "lr": lr * (bias_lr_factor if "bias" in name else 1.0),
               "weight_decay": weight_decay_bias if "bias" in name else weight_decay, "initial_lr": None}
              for name, p in model.named_parameters() if p.requires_grad]
    for group in groups:
        group["initial_lr"] = group["lr"]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


def warmup_multistep(step: int, warmup_iters: int = 8000, warmup_factor: float = 1 / 3,
                     milestones: tuple[int, ...] = (64000, 80000, 88000), gamma: float = 0.5,
                     method: str = "linear") -> float:
    """The original ``WarmupMultiStepLR`` factor at ``step`` (0-based): warm-up from ``warmup_factor``
    (``linear`` to 1, or ``constant``), times ``gamma`` at each milestone passed."""
    factor = 1.0
    if step < warmup_iters:
        alpha = step / warmup_iters
        factor = warmup_factor if method == "constant" else warmup_factor * (1 - alpha) + alpha
    return factor * gamma ** sum(step >= m for m in milestones)


def train_step(model: STFTDetector, sample: dict[str, Any],
               device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The five losses of one sample as the original trains: the key frame and its references through the
    backbone as ONE clip, the head on all of them, the losses on the key frame."""
    from endofm.models.stft import FPN_STRIDES
    from endofm.models.stft_loss import stft_losses

    frames = sample["frames"].to(device)
    outputs = model(frames, clip=True)
    return stft_losses(outputs, sample["boxes"].to(device), sample["labels"].to(device), FPN_STRIDES)


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
    from endofm.data.datasets.kumc import KUMCDataset, _load_rgb, read_voc
    from endofm.metrics.detection import coco_map, detection_metrics

    index = KUMCDataset(root, split, skip_unannotated=True)
    input_h, input_w = (size, size) if isinstance(size, int) else size
    annotated: dict[int, dict[int, Path]] = {}
    for v, k, xml in index.samples:
        annotated.setdefault(v, {})[k] = xml
    predictions, truths = [], []
    videos = [v for v in range(len(index.videos)) if v in annotated or queue == "list"]

    def reader(paths: list[Path]) -> Callable[[list[int]], torch.Tensor]:
        return lambda ids: STFT_INPUT.normalize(resize_frames(np.stack([_load_rgb(paths[i - 1]) for i in ids]),
                                                              size)).transpose(0, 1)

    mine = videos if queue == "list" else [videos[i] for i in shard(len(videos))]  # one queue: not shared out
    detected = detect_videos(model, [reader(index.videos[v][1]) for v in mine],
                             [len(index.videos[v][1]) for v in mine], device, seed, queue, progress, references)
    if queue != "list":
        detected = gather_shards(detected)
    for v, per_frame in zip(videos, detected, strict=True):
        for k, xml in sorted(annotated.get(v, {}).items()):
            boxes, labels, (height, width) = read_voc(xml, POLYP_CLASSES)
            det = per_frame[k]
            scale = torch.tensor([width / input_w, height / input_h] * 2)
            pred, keep = clip_to_image(det["boxes"] * scale, height, width)
            predictions.append({"boxes": pred[keep], "scores": det["scores"][keep], "labels": det["labels"][keep] - 1})
            truths.append({"boxes": clip_to_image(boxes, height, width)[0], "labels": labels})
    agnostic = coco_map([{**p, "labels": torch.zeros_like(p["labels"])} for p in predictions],
                        [{**t, "labels": torch.zeros_like(t["labels"])} for t in truths], 1)
    return {**detection_metrics(predictions, truths, len(POLYP_CLASSES), score_threshold=score_threshold),
            "map_50_class_agnostic": agnostic["map_50"], "frames": len(truths)}


def evaluate_loaded_stft(loaded: LoadedFinetuned, root: str | os.PathLike, split: str = "test",
                         device: torch.device | str = "cpu", seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """:func:`evaluate_stft` of a detector read by ``endofm.load_finetuned`` (a released ``kumc.pth`` or a
    folder), at its own input size."""
    return evaluate_stft(loaded.model, root, split, loaded.input.size, device, seed,  # type: ignore[arg-type]
                         progress=progress)


# --- the fine-tuning recipe (``endofm finetune detect`` with ``detector: stft``) -----------------------------


EMPTY_FRAMES = ("leave_out", "skip_iteration", "train")


@dataclass
class STFTSizes:
    """The STFT detector's own parts and input (``detector: stft``); the defaults are the released model's."""

    out_channels: int = 256
    """FPN and head channels (``BACKBONE_OUT_CHANNELS``; a multiple of 32)."""
    num_convs: int = 4
    """Convolutions of each head tower (``FCOS.NUM_CONVS``)."""
    size: int = 640
    """Frames are resized to ``size`` x ``size`` (the original: 640, aspect ratio not kept)."""
    reference_seed: int = 0
    """Seed of the test-time reference draws (the original never seeds them)."""
    empty_frames: str = "leave_out"
    """Training frames without a box: ``leave_out`` of the training set (every iteration a step),
    ``skip_iteration`` (the original: drawn, and their iteration skipped with no optimiser or learning-rate
    step, counted in ``iterations.max_iter``) or ``train`` on them, every location a negative."""

    queue: str = "video"
    """Test-time reference queue: ``video`` (reset at each video's first frame, as the model intends) or
    ``list`` (the original with its own list files: one queue over the split's videos, never reset;
    :func:`list_queue_windows`)."""

    def __post_init__(self) -> None:
        if self.queue not in QUEUES:
            raise ConfigError(f"stft.queue must be one of {', '.join(QUEUES)}, got {self.queue!r}")
        if self.empty_frames not in EMPTY_FRAMES:
            raise ConfigError(f"stft.empty_frames must be one of {', '.join(EMPTY_FRAMES)}, got {self.empty_frames!r}")
        if self.out_channels < 32 or self.out_channels % 32:
            raise ConfigError(f"stft.out_channels must be a positive multiple of 32, got {self.out_channels}")
        if self.size < 32 or self.num_convs < 0:
            raise ConfigError(f"stft.size must be at least 32 and stft.num_convs not negative ({self})")


@dataclass
class IterationSchedule:
    """The original's iteration-based ``SOLVER`` (``detector: stft``): one iteration is one optimiser step on
    one sample; the learning rate of iteration ``i`` (0-based) is the base rate (times ``bias_lr_factor`` for
    biases) times :func:`warmup_multistep` of ``i``, as the original's ``WarmupMultiStepLR`` stepped after
    every iteration. The base rate, momentum and weight decay are ``optim.lr``, ``optim.momentum`` and
    ``optim.weight_decay``."""

    max_iter: int = 96000
    warmup_iters: int = 8000
    warmup_factor: float = 1 / 3
    warmup_method: str = "linear"
    steps: tuple[int, ...] = (64000, 80000, 88000)
    gamma: float = 0.5
    bias_lr_factor: float = 2.0
    weight_decay_bias: float = 0.0
    test_period: int = 4000
    """Evaluate on the validation split every this many iterations (the original's ``TEST_PERIOD``) and after
    the last; 0: after the last only."""
    keep: str = "best"
    """The model reported and saved: ``best`` (the evaluation with the highest ``selection.metric`` on the
    validation split) or ``last`` (the model after the last iteration; the original selects nothing: its
    trainer only logs the periodic evaluations of a ``cvc_`` method and saves ``model_final``)."""

    def __post_init__(self) -> None:
        if self.max_iter < 1 or self.warmup_iters < 0 or self.test_period < 0:
            raise ConfigError(f"iterations: max_iter must be positive, warmup_iters and test_period not negative "
                              f"({self})")
        if self.warmup_method not in ("linear", "constant"):
            raise ConfigError(f"iterations.warmup_method must be linear or constant, got {self.warmup_method!r}")
        if list(self.steps) != sorted(self.steps):
            raise ConfigError(f"iterations.steps must increase, got {list(self.steps)}")
        if self.keep not in ("best", "last"):
            raise ConfigError(f"iterations.keep must be best or last, got {self.keep!r}")

    def factor(self, step: int) -> float:
        """The learning-rate factor of 0-based iteration ``step``."""
        return warmup_multistep(step, self.warmup_iters, self.warmup_factor, tuple(self.steps), self.gamma,
                                self.warmup_method)


def build_stft_network(model: Any, sizes: STFTSizes) -> STFTDetector:
    """An STFT detector to fine-tune (``model``: a :class:`~endofm.tasks.config.FinetuneModelConfig`): the body
    is the backbone of ``model.init`` (every tensor of it: blocks, norm, embeddings, as the original's
    ``get_vit_base_patch16_224`` loads the pretrained teacher), with ``model.drop_path_rate``; ``fpn1``/``fpn2``,
    the FPN and the head start at the original's initialisation."""
    backbone = build_backbone(dataclasses.replace(model, grad_checkpointing=False))
    config = STFTConfig(backbone=backbone.config, out_channels=sizes.out_channels, num_convs=sizes.num_convs,
                        num_classes=len(POLYP_CLASSES))
    detector = STFTDetector(config)
    missing, unexpected = detector.backbone.body.load_state_dict(backbone.state_dict(), strict=False)
    if unexpected or any(not key.startswith(("fpn1.", "fpn2.")) for key in missing):
        raise CheckpointError(f"{model.init}: the backbone does not fit the STFT body (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]})")
    detector.backbone.body.set_grad_checkpointing(model.grad_checkpointing)
    return detector.train()


def inference_config(config: STFTConfig) -> STFTConfig:
    """The sizes a saved detector records: stochastic depth is a training setting (off at inference)."""
    return dataclasses.replace(config, backbone=dataclasses.replace(config.backbone, drop_path_rate=0.0))


def collate_one(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The original trains at batch 1: the one sample as it is."""
    if len(samples) != 1:
        raise ConfigError(f"the STFT trains one sample per iteration (run.batch_size 1), got {len(samples)}")
    return samples[0]


class STFTRecipe(FinetuneRecipe):
    """The original STFT training (:func:`train_step`, :func:`original_optimizer`, :class:`IterationSchedule`),
    evaluated with the original's test-time video path (:func:`evaluate_stft`) every ``test_period``
    iterations; see :func:`finetune_stft`."""

    task = "detect"
    default_metric = "map_50"
    evaluator = evaluate_stft

    def __init__(self, config: Any, context: Any, *args: Any) -> None:
        if config.stft.empty_frames == "skip_iteration" and (context.world_size > 1 or config.run.precision == "fp16"):
            raise ConfigError("stft.empty_frames=skip_iteration needs one process and no fp16 loss scaling (a "
                              "skipped iteration has no gradient); use stft.empty_frames=leave_out")
        if config.run.batch_size != context.world_size:
            raise ConfigError(f"detector stft trains one sample per process as the original: run.batch_size must "
                              f"be the number of processes ({context.world_size}), got {config.run.batch_size}")
        super().__init__(config, context, *args)
        self.total = self.config.iterations.max_iter
        self.unused_parameters = True  # the offset convolutions run without gradient, as the original's
        self.pending: dict[str, float] = {}
        self.last_eval: tuple[int, dict[str, Any]] | None = None
        self.best_iteration, self.best_metrics = 0, None
        self.steps_per_epoch = 1
        self.skipped_iterations, self.last_skipped = 0, False

    def build_network(self) -> STFTDetector:
        return build_stft_network(self.config.model, self.config.stft)

    def evaluate(self, split: Any) -> dict[str, Any]:
        sizes = self.config.stft
        try:
            return evaluate_stft(self.network, self.config.data.root, split, sizes.size, self.device,
                                 sizes.reference_seed, queue=sizes.queue)
        finally:
            self.network.train()

    def configure(self, steps_per_epoch: int, epochs: int) -> torch.optim.Optimizer:
        schedule, optim = self.config.iterations, self.config.optim
        limits = [schedule.max_iter, epochs * steps_per_epoch, self.config.run.max_steps or schedule.max_iter]
        self.total, self.steps_per_epoch = min(limits), steps_per_epoch
        return original_optimizer(self.network, optim.lr, optim.weight_decay, optim.momentum,
                                  schedule.bias_lr_factor, schedule.weight_decay_bias)

    def before_step(self, step: int, epoch: int, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        # the original's scheduler steps only on the iterations it did not skip
        factor = self.config.iterations.factor(step - self.skipped_iterations)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        return {"lr": self.config.optim.lr * factor}

    def loss_parts(self, network: nn.Module, batch: dict, epoch: int) -> list[Any]:
        """No part for a frame without boxes under ``stft.empty_frames=skip_iteration``: no gradient, so the
        optimiser leaves every parameter (and its momentum) as it is, as the original's skipped iteration."""
        self.last_skipped = self.config.stft.empty_frames == "skip_iteration" and not len(batch["labels"])
        if self.last_skipped:
            self.skipped_iterations += 1
            return []
        return super().loss_parts(network, batch, epoch)

    def compute_loss(self, network: nn.Module, batch: dict, epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        losses = train_step(network, batch, self.device)
        return sum(losses.values()), {k: float(v.detach()) for k, v in losses.items()}

    def batch_size(self, batch: dict) -> int:
        return 1

    def parts(self) -> tuple[EndoFMBackbone, nn.Module]:
        return self.network.backbone.body, self.network

    def after_step(self, step: int) -> None:
        iteration, period = step + 1, self.config.iterations.test_period
        if self.last_skipped or (iteration != self.total and not (period and iteration % period == 0)):
            return  # the original's skipped iteration passes its evaluation by too
        metrics = self.evaluate(self.split_names["val"])
        if self.metric not in metrics:
            raise ConfigError(f"selection.metric {self.metric!r} is not one of {sorted(metrics)}")
        self.last_eval = (iteration, metrics)
        value = float(metrics[self.metric])
        if is_better(value, self.best_score):
            self.best_score, self.best_iteration, self.best_metrics = value, iteration, metrics
            if self.config.iterations.keep == "best":
                self.best_state = {k: v.detach().cpu().clone() for k, v in self.network.state_dict().items()}
        scalars = {f"val_{k}": int(v) if isinstance(v, (int, np.integer)) else float(v)
                   for k, v in metrics.items() if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)}
        self.history.append({"iteration": iteration, **scalars})
        self.pending = scalars

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        pending, self.pending = self.pending, {}
        return pending

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "best_iteration": self.best_iteration, "best_metrics": self.best_metrics,
                "last_eval": self.last_eval, "skipped_iterations": self.skipped_iterations}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.best_iteration, self.best_metrics = state["best_iteration"], state["best_metrics"]
        self.last_eval = state["last_eval"]
        self.skipped_iterations = state.get("skipped_iterations", 0)

    def save_model(self, directory: Path, extra: dict[str, Any]) -> Path:
        sizes = self.config.stft
        spec = dataclasses.replace(STFT_INPUT, size=(sizes.size, sizes.size))
        data = {"size": sizes.size, "reference_seed": sizes.reference_seed, "splits": self.split_names}
        return save_folder(directory, self.network, spec, {"detector": MODEL_NAME, "data": data, **extra})

    def before_finish(self) -> None:
        """The kept model's test metrics, evaluated by every process (each its share of the videos)."""
        schedule, names = self.config.iterations, self.split_names
        if schedule.keep == "best":
            if self.best_state is None:
                return  # :meth:`finish` says why
            self.network.load_state_dict(self.best_state)
        chosen = self.best_iteration if schedule.keep == "best" else self.total
        same = names["val"] == names["test"]
        if same and schedule.keep == "best":
            self.test_metrics = self.best_metrics
        elif same and self.last_eval is not None and self.last_eval[0] == chosen:
            self.test_metrics = self.last_eval[1]
        else:
            self.test_metrics = self.evaluate(names["test"])

    def finish(self, out_dir: Path) -> dict[str, str]:
        schedule, names = self.config.iterations, self.split_names
        if schedule.keep == "best":
            if self.best_state is None:
                raise TrainingError(f"no validation result was finite in {out_dir}; nothing to select (check the "
                                    "data and the learning rate)")
            chosen = self.best_iteration
            protocol = (f"the model of iteration {chosen} of {self.total}, chosen on {names['val']} by "
                        f"{self.metric} (evaluated every {schedule.test_period or self.total} iterations)")
            if names["val"] == names["test"]:
                protocol = f"select-on-test: {protocol}; the test metrics are optimistic"
        else:
            chosen = self.total
            protocol = f"the model after the last iteration ({self.total}); nothing selected"
        if names["test"] == "val":
            protocol = (f"the original protocol: trained on {names['train']}2019, evaluated on val2019 (the "
                        f"original's DATASETS.TEST, the split the paper reports); {protocol}")
        test_metrics = self.test_metrics
        select_on_test = schedule.keep == "best" and names["val"] == names["test"]
        model_dir = self.save_model(out_dir / "model", {"selection": {
            "metric": self.metric, "keep": schedule.keep, "iteration": chosen, "protocol": protocol}})
        report = {"task": self.task, "detector": MODEL_NAME, "protocol": protocol, "select_on_test": select_on_test,
                  "splits": names, "selection_metric": self.metric, "keep": schedule.keep,
                  "iterations": self.total, "iteration": chosen,
                  "best_epoch": max(1, math.ceil(chosen / self.steps_per_epoch)), "best_val": self.best_score,
                  "test": test_metrics, "val_history": self.history, "model": str(model_dir)}
        metrics_path = atomic_write_text(out_dir / "metrics.json", json.dumps(json_safe(report), indent=2) + "\n")
        keys = sorted({k for row in self.history for k, v in row.items()
                       if k != "iteration" and not isinstance(v, int)})  # counts are the same every evaluation
        plot_curves(self.history, keys, out_dir / "plots", x_key="iteration")
        return {"model": str(model_dir), "metrics": str(metrics_path), "plots": str(out_dir / "plots")}


def finetune_stft(config: Any, resume: bool = False) -> dict[str, Any]:
    """Fine-tune the STFT detector as the original (``config``: a :class:`~endofm.tasks.detect.DetectConfig`
    with ``detector: stft``).

    The run is iteration-based as the original's: ``iterations.max_iter`` iterations of one sample each,
    passes over the training frames in a new random order each (the original's random sampler repeated
    until ``MAX_ITER``). ``run.epochs`` counts passes: it is an upper bound (the recipes set it to
    ``max_iter``, so that the iterations decide) and the run records the passes its iterations take; a smaller
    ``run.epochs`` or ``run.max_steps`` ends it sooner. The learning rate follows the iteration count whatever
    the passes. The run folder gets ``model/`` (:func:`save_folder`, read by ``endofm.load_finetuned``),
    ``metrics.json`` (frame-level F1 of the original, box P/R/F1 at IoU 0.5, COCO mAP) and plots.
    """
    from endofm.data.datasets.kumc import KUMCDataset

    data, sizes, run = config.data, config.stft, config.run
    if not data.root:
        raise ConfigError("data.root is not set: give the KUMC/PolypsSet folder (--data ROOT)")
    splits = data.splits
    test = "test" if splits.test == "auto" else splits.test
    val = test if config.selection.select_on_test else ("val" if splits.val == "auto" else splits.val)
    for split in {val, test}:
        KUMCDataset(data.root, split, skip_unannotated=True)  # the layout's errors before any training
    train = STFTTrainFrames(data.root, splits.train, sizes.size, data.hflip, sizes.empty_frames == "leave_out")
    if not len(train):
        raise ConfigError(f"{data.root}: the {splits.train} split has no annotated frame with a box to train on")
    per_pass = min(len(train), run.epoch_steps or len(train))
    total = min(config.iterations.max_iter, run.max_steps or config.iterations.max_iter, run.epochs * per_pass)
    config = dataclasses.replace(config, run=dataclasses.replace(run, epochs=math.ceil(total / per_pass),
                                                                 max_steps=total))
    names = {"train": splits.train, "val": val, "test": test}
    return run_finetune(config, STFTRecipe, (train, None, None, names), collate_one, resume)
