"""The segmentation task's data: the transforms of frames and masks, the train/validation/test datasets of a
CVC-ClinicDB-layout folder, and the overrides a folder without the original's lists needs.

Splits: ``splits/train.txt`` trains, ``splits/test.txt`` tests, and the validation split is
``splits/val.txt`` when present, else ``val_fraction`` of the training sequences (whole sequences); the split
names ``original_train`` / ``original_test`` are the original's lists, which ship with the package.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2

from endofm.data.datasets.cvc import ORIGINAL_SPLITS, CVCDataset
from endofm.data.datasets.splits import find_leakage, split_by_case
from endofm.data.transforms import Resize
from endofm.errors import ConfigError, DatasetError, InputError
from endofm.models.inputs import InputSpec
from endofm.tasks.segment.config import SegmentDataConfig


def _minmax_uint8(video: torch.Tensor) -> torch.Tensor:
    """Every frame scaled by its own minimum and maximum to 0..255 and truncated to uint8, as the original's
    reader does before its transforms."""
    x = video.float()
    low, high = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
    return ((x - low) / (high - low).clamp_min(1e-12) * 255).to(torch.uint8)


class SegmentTransform:
    """Geometric steps on frames and masks together (one draw per frame or per clip), then the model's input
    normalisation (:class:`~endofm.models.inputs.InputSpec`): uint8 ``[T, 3, H, W]`` + mask ``[T, H, W]`` ->
    ``{"video": [3, T, h, w], "mask": long [T, h, w]}``."""

    def __init__(self, geometric: v2.Transform, spec: InputSpec, per_frame: bool = False) -> None:
        self.geometric, self.spec, self.per_frame = geometric, spec, per_frame

    def __call__(self, video: torch.Tensor, *, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if video.ndim != 4 or video.shape[1] != 3 or video.dtype != torch.uint8:
            raise InputError(f"expected a uint8 [T, 3, H, W] video, got {video.dtype} {tuple(video.shape)}")
        if self.spec.minmax:
            video = _minmax_uint8(video)
        masks = torch.zeros(video.shape[0], *video.shape[2:], dtype=torch.uint8) if mask is None else mask
        pairs = ([(video[t : t + 1], masks[t : t + 1]) for t in range(len(video))] if self.per_frame
                 else [(video, masks)])
        outs = [self.geometric({"video": tv_tensors.Video(v), "mask": tv_tensors.Mask(m.to(torch.uint8))})
                for v, m in pairs]
        frames = torch.cat([out["video"].as_subclass(torch.Tensor) for out in outs])
        result = {"video": self.spec.normalize(frames)}
        if mask is not None:
            result["mask"] = torch.cat([out["mask"].as_subclass(torch.Tensor) for out in outs]).long()
        return result


def segment_transforms(data: SegmentDataConfig) -> tuple[SegmentTransform, SegmentTransform]:
    """Train (resize to ``resize``, random crop to ``size``, flip, rotation) and eval (resize to ``size``)
    transforms, with the input normalisation of ``data``."""
    size = [data.size, data.size]
    steps: list[v2.Transform] = ([Resize([data.resize] * 2, antialias=True), v2.RandomCrop(size)] if data.resize
                                 else [Resize(size, antialias=True)])
    steps.append(v2.RandomHorizontalFlip(data.hflip))
    if data.rotation:
        steps.append(v2.RandomRotation(data.rotation, interpolation=InterpolationMode.BILINEAR))
    spec = data.input_spec()
    return (SegmentTransform(v2.Compose(steps), spec, data.per_frame_augment),
            SegmentTransform(Resize(size, antialias=True), spec))


def input_transform(spec: InputSpec) -> SegmentTransform:
    """The evaluation transform of a model's input: resize (stretch) to its size (PIL's arithmetic, as in
    training) and normalise as it expects."""
    return SegmentTransform(Resize(list(spec.size), antialias=True), spec)



def _keep(dataset: CVCDataset, names: set[str]) -> CVCDataset:
    dataset.samples = [s for s in dataset.samples if s[0].name in names]
    dataset.sequences = [s for s in dataset.sequences if s.name in names]
    return dataset


def segment_datasets(data: SegmentDataConfig, select_on_test: bool = False,
                     seed: int = 0) -> tuple[CVCDataset, CVCDataset, CVCDataset, dict[str, str]]:
    """Train, validation and test datasets and the names of their splits (see the module docstring)."""
    if not data.root:
        raise ConfigError("data.root is not set: give the CVC-ClinicDB folder (--data ROOT)")
    train_tf, eval_tf = segment_transforms(data)
    splits = data.splits
    test_name = "test" if splits.test == "auto" else splits.test

    def make(split: str, transform: SegmentTransform) -> CVCDataset:
        return CVCDataset(data.root, split, clip_length=data.clip_length, transform=transform,
                          mask_threshold=data.mask_threshold)

    train, test = make(splits.train, train_tf), make(test_name, eval_tf)
    names = {"train": splits.train, "test": test_name}
    report = find_leakage({"train": [s.name for s in train.sequences], "test": [s.name for s in test.sequences]})
    if report.leaks:
        names["leakage"] = str(report)
    if select_on_test:
        return train, test, test, {**names, "val": test_name}
    val_name = splits.val
    if val_name == "auto":
        val_name = "val" if (Path(train.root) / "splits" / "val.txt").exists() else ""
    if val_name:
        return train, make(val_name, eval_tf), test, {**names, "val": val_name}
    parts = split_by_case([s.name for s in train.sequences], None,
                          {"train": 1 - splits.val_fraction, "val": splits.val_fraction}, seed=seed)
    if not parts["train"] or not parts["val"]:
        raise DatasetError(f"{train.root / 'splits' / (splits.train + '.txt')}: too few sequences to hold out a "
                           "validation split; add splits/val.txt")
    val = _keep(make(splits.train, eval_tf), set(parts["val"]))
    _keep(train, set(parts["train"]))
    names.update(train=f"{splits.train} (rest)", val=f"{splits.val_fraction:g} of {splits.train} sequences (held out)")
    return train, val, test, names


def _original_lists_missing(folder: Path) -> list[int]:
    """Frames of the original CVC sequence lists (``original_train``/``original_test``) missing in ``folder``."""
    frames = folder / "Original"
    present = {path.stem for path in frames.iterdir()} if frames.is_dir() else set()
    needed = sorted({frame for split in ORIGINAL_SPLITS.values() for seq in split for frame in seq.frames})
    return [frame for frame in needed if str(frame) not in present]


def dataset_overrides(recipe: str, folder: Path) -> tuple[list[str], str]:
    """Overrides a CVC folder needs to run ``recipe``, and the note that says so: a folder without the frames
    of the original's sequence lists (a synthetic corpus) runs ``segment_original`` on its own splits."""
    if recipe != "segment_original":
        return [], ""
    missing = _original_lists_missing(folder)
    if not missing:
        return [], ""
    return (["data.splits.train=train", "data.splits.test=test"],
            f"{folder} lacks {len(missing)} frames of the original sequence lists (e.g. Original/{missing[0]}): "
            "its own train/test splits ran")
