"""PolypDiag-layout datasets of the classification task, with the preprocessing a config or a model folder names.

Split rules (``data.splits``): with ``splits/test.txt`` present, ``val.txt`` selects and ``test.txt`` tests;
in the original layout (``train.txt`` and ``val.txt`` only, ``val.txt`` being what the original tested on)
``val_fraction`` of the training videos (stratified by label) select and ``val.txt`` tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from endofm.data.datasets.polypdiag import PolypDiagDataset
from endofm.data.datasets.splits import split_by_case
from endofm.data.transforms import eval_transform, original_view, train_transform
from endofm.errors import ConfigError, DatasetError
from endofm.tasks.classify.config import ClassifyDataConfig


def polypdiag_dataset(root: str | Path, split: str, data: Mapping[str, Any], train: bool = False) -> PolypDiagDataset:
    """One split with the preprocessing ``data`` names (a :class:`ClassifyDataConfig` as a dict, or a model
    folder's record; a record without ``sampling``/``view`` is of a model trained with ``spread``/``center``);
    ``train`` gives the training view and window."""
    size, normalization = int(data["size"]), data["normalization"]
    if data.get("view", "center") == "original":
        transform = original_view(size, train, normalization)
    else:
        transform = (train_transform(size, normalization=normalization) if train
                     else eval_transform(size, normalization=normalization))
    return PolypDiagDataset(root, split, num_frames=int(data["num_frames"]), transform=transform,
                            sampling=data.get("sampling", "spread"), random_start=train,
                            sampling_rate=int(data.get("sampling_rate", 32)),
                            target_fps=float(data.get("target_fps", 30.0)))


def classify_datasets(data: ClassifyDataConfig, select_on_test: bool = False,
                      seed: int = 0) -> tuple[PolypDiagDataset, PolypDiagDataset, PolypDiagDataset, dict[str, str]]:
    """Train, validation and test datasets, and the names of their splits (see the module docstring)."""
    root = Path(data.root)
    if not data.root:
        raise ConfigError("data.root is not set: give the PolypDiag folder (--data ROOT)")
    splits = data.splits
    record = dataclasses.asdict(data)
    has_test = (root / "splits" / "test.txt").exists()
    test_name = splits.test if splits.test != "auto" else ("test" if has_test else "val")

    def make(split: str, train: bool = False) -> PolypDiagDataset:
        return polypdiag_dataset(root, split, record, train)

    train = make(splits.train, train=True)
    test = make(test_name)
    if select_on_test:
        return train, test, test, {"train": splits.train, "val": test_name, "test": test_name}
    val_name = splits.val
    if val_name == "auto":
        val_name = "val" if test_name != "val" and (root / "splits" / "val.txt").exists() else ""
    if val_name:
        return train, make(val_name), test, {"train": splits.train, "val": val_name, "test": test_name}
    parts = split_by_case(train.items, lambda item: str(item[0]),
                          {"train": 1 - splits.val_fraction, "val": splits.val_fraction}, seed=seed,
                          stratify=lambda item: item[1])
    if not parts["train"] or not parts["val"]:
        raise DatasetError(f"{root / 'splits' / (splits.train + '.txt')}: too few videos to hold out a validation "
                           "split; add splits/test.txt or give data.splits.val")
    val = make(splits.train)
    train.items, val.items = parts["train"], parts["val"]
    held_out = f"{splits.val_fraction:g} of {splits.train} (held out, stratified)"
    return train, val, test, {"train": f"{splits.train} (rest)", "val": held_out, "test": test_name}
