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

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file as save_safetensors
from tqdm import tqdm

from endofm.data.synthetic import POLYP_CLASSES
from endofm.data.video import VideoReader
from endofm.errors import CheckpointError, InputError
from endofm.io import atomic_write, atomic_write_text
from endofm.models.checkpoint import CONFIG_FILE, FORMAT_NAME, FORMAT_VERSION, WEIGHTS_FILE, read_state
from endofm.models.stft import (
    CAFFE_MEAN_BGR,
    STFTConfig,
    STFTDetector,
    is_stft_state,
    resize_frames,
    stft_from_state,
)
from endofm.tasks.finetuned import InputSpec, LoadedFinetuned

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
    ``config.json`` (``model: stft``, its sizes, ``metadata`` with ``task: detect`` and the input spec), each
    written atomically, the weights first."""
    directory = Path(directory)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {"task": "detect", "input": spec.to_dict(), "classes": list(POLYP_CLASSES), **(metadata or {})}
    config = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "model": MODEL_NAME, "stft": model.config.to_dict(),
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
    where = str(directory / CONFIG_FILE)
    try:
        sizes = STFTConfig.from_dict(config["stft"])
        metadata = dict(config.get("metadata") or {})
        spec = InputSpec.from_dict(metadata["input"]) if "input" in metadata else STFT_INPUT
    except (InputError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{where}: the recorded STFT config does not fit ({error})") from error
    weights = directory / WEIGHTS_FILE
    if not weights.exists():
        raise CheckpointError(f"{directory}: {WEIGHTS_FILE} is missing")
    model = stft_from_state(read_state(weights), sizes.backbone.num_heads, str(weights))
    if model.config != sizes:
        raise CheckpointError(f"{where}: the recorded sizes {sizes} differ from the weights' {model.config}")
    return LoadedFinetuned("detect", model, spec, str(directory), "endofm-stft", metadata)


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


def detect_video(model: STFTDetector, read: Callable[[list[int]], torch.Tensor], length: int,
                 device: torch.device | str = "cpu", seed: int = 0, progress: bool = False,
                 ) -> list[dict[str, Any]]:
    """Per frame (0-based order) the detections of the original test path: ``{"frame_ids"`` (1-based ids of
    the key and its references, in the head's order), ``"boxes"``, ``"scores"``, ``"labels"`` (1-based)}``.
    ``read(ids)`` returns the model's input frames ``[N, 3, H, W]`` for 1-based ids."""
    if length < 1:
        raise InputError("the video has no frames")
    device = torch.device(device)
    model = model.to(device).eval()
    rng = np.random.RandomState(seed)
    features = VideoFeatures(model, read, length, device)
    results = []
    for frame in tqdm(range(1, length + 1), desc="frames", unit="frame", disable=not progress):
        window = window_ids(frame, length)
        left, right = draw_references(rng)
        ids = [window[-MIN_OFFSET]] + [window[p] for p in left] + [window[p] for p in right]
        stacked = features.get(ids)
        with torch.inference_mode():
            detections = model.detect_parts(stacked, features.image_size)["detections"]
        results.append({"frame_ids": ids, **{k: v.cpu() for k, v in detections.items()}})
        features.release_before(frame + MIN_OFFSET + 1)
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


def find_stft(path: str | os.PathLike, num_heads: int | None = None) -> LoadedFinetuned | None:
    """The STFT detector of a released checkpoint or a folder of :func:`save_folder`; None for anything else."""
    from endofm.tasks.finetuned import load_finetuned, released_layout

    path = Path(path)
    if path.is_dir():
        try:
            is_stft = json.loads((path / CONFIG_FILE).read_text()).get("model") == MODEL_NAME
        except (OSError, json.JSONDecodeError, AttributeError):
            return None
    else:
        found = released_layout(path)
        is_stft = found is not None and found[0].name == MODEL_NAME
    return load_finetuned(path, num_heads=num_heads) if is_stft else None


# --- training as the original --------------------------------------------------------------------------------


class STFTTrainFrames(torch.utils.data.Dataset):
    """Training samples of the original: the key frame, one reference 1-9 frames before it and one 1-9 after
    it (ids clamped to the video), all resized to ``size`` x ``size`` (PIL bilinear), flipped together with
    probability ``hflip`` and normalised as :data:`STFT_INPUT`. Boxes are clipped to the image (empty ones
    dropped), scaled to the input and flipped with the original's ``+ 1`` convention; labels are 1-based.
    Draws come from torch's generator (seeded per worker by the training loop)."""

    def __init__(self, root: str | os.PathLike, split: str = "train", size: int = 640, hflip: float = 0.5) -> None:
        from endofm.data.datasets.kumc import KUMCDataset

        self.index = KUMCDataset(root, split, skip_unannotated=True)
        self.size, self.hflip = size, hflip

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
                       bias_lr_factor: float = 2.0) -> torch.optim.SGD:
    """The original's SGD: one group per parameter, biases at ``bias_lr_factor`` x lr without weight decay,
    every other parameter (norms and embeddings included) with ``weight_decay``."""
    groups = [{"params": [p], "lr": lr * (bias_lr_factor if "bias" in name else 1.0),
               "weight_decay": 0.0 if "bias" in name else weight_decay, "initial_lr": None}
              for name, p in model.named_parameters() if p.requires_grad]
    for group in groups:
        group["initial_lr"] = group["lr"]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


def warmup_multistep(step: int, warmup_iters: int = 8000, warmup_factor: float = 1 / 3,
                     milestones: tuple[int, ...] = (64000, 80000, 88000), gamma: float = 0.5) -> float:
    """The original ``WarmupMultiStepLR`` factor at ``step`` (0-based): linear warm-up from ``warmup_factor``,
    times ``gamma`` at each milestone passed."""
    factor = 1.0
    if step < warmup_iters:
        alpha = step / warmup_iters
        factor = warmup_factor * (1 - alpha) + alpha
    return factor * gamma ** sum(step >= m for m in milestones)


def train_step(model: STFTDetector, sample: dict[str, Any],
               device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The five losses of one sample as the original trains: the key frame and its references through the
    backbone as ONE clip, the head on all of them, the losses on the key frame."""
    from endofm.models.stft import FPN_STRIDES
    from endofm.models.stft_loss import stft_losses

    frames = sample["frames"].to(device)
    outputs = model.head(model.clip_features(frames))
    return stft_losses(outputs, sample["boxes"].to(device), sample["labels"].to(device), FPN_STRIDES)


def evaluate_stft(model: STFTDetector, root: str | os.PathLike, split: str, size: int = 640,
                  device: torch.device | str = "cpu", seed: int = 0, score_threshold: float = 0.5) -> dict[str, Any]:
    """Metrics of the original test path on a KUMC-layout split: every video run through :func:`detect_video`
    (its queue, its references), boxes scaled back to the frames' size, scored on the annotated frames: the
    original's frame-level F1 at ``score_threshold``, box-level P/R/F1 at IoU 0.5, COCO mAP, and the COCO AP
    at IoU 0.5 of polyp boxes whatever their class (``map_50_class_agnostic``)."""
    from endofm.data.datasets.kumc import KUMCDataset, _load_rgb, read_voc
    from endofm.metrics.detection import coco_map, detection_metrics

    index = KUMCDataset(root, split, skip_unannotated=True)
    annotated: dict[int, dict[int, Path]] = {}
    for v, k, xml in index.samples:
        annotated.setdefault(v, {})[k] = xml
    predictions, truths = [], []
    for v, (_, paths) in enumerate(index.videos):
        if v not in annotated:
            continue

        def read(ids: list[int], paths: list[Path] = paths) -> torch.Tensor:
            return STFT_INPUT.normalize(resize_frames(np.stack([_load_rgb(paths[i - 1]) for i in ids]), size)
                                        ).transpose(0, 1)

        per_frame = detect_video(model, read, len(paths), device, seed)
        for k, xml in sorted(annotated[v].items()):
            boxes, labels, (height, width) = read_voc(xml, POLYP_CLASSES)
            det = per_frame[k]
            scale = torch.tensor([width / size, height / size] * 2)
            predictions.append({"boxes": det["boxes"] * scale, "scores": det["scores"], "labels": det["labels"] - 1})
            truths.append({"boxes": boxes, "labels": labels})
    agnostic = coco_map([{**p, "labels": torch.zeros_like(p["labels"])} for p in predictions],
                        [{**t, "labels": torch.zeros_like(t["labels"])} for t in truths], 1)
    return {**detection_metrics(predictions, truths, len(POLYP_CLASSES), score_threshold=score_threshold),
            "map_50_class_agnostic": agnostic["map_50"], "frames": len(truths)}
