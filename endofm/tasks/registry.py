"""The three fine-tuning tasks by name: their config class, entry point, and evaluation on a dataset."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from endofm.tasks.classify import ClassifierNetwork, ClassifyConfig, finetune_classify
from endofm.tasks.detect import DetectConfig, finetune_detect
from endofm.tasks.folder import FinetunedModel
from endofm.tasks.segment import SegmentConfig, finetune_segment

TASK_API: dict[str, tuple[type, Callable[..., dict[str, Any]]]] = {
    "classify": (ClassifyConfig, finetune_classify),
    "segment": (SegmentConfig, finetune_segment),
    "detect": (DetectConfig, finetune_detect),
}


def evaluate_model(model: FinetunedModel, root: str, split: str = "test", device: str = "cpu",
                   batch_size: int = 2) -> dict[str, Any]:
    """Metrics of a fine-tuned model on one split of a dataset in its task's original layout, with the
    preprocessing the model was trained with."""
    from endofm.data.datasets.kumc import KUMCDataset
    from endofm.tasks.classify import evaluate_classifier, polypdiag_dataset
    from endofm.tasks.detect import DetectDataConfig, detect_transforms, evaluate_detector
    from endofm.tasks.finetuned import load_finetuned
    from endofm.tasks.segment import evaluate_segment_model

    data = model.data
    if model.task == "classify":
        dataset = polypdiag_dataset(root, split, data)
        network = ClassifierNetwork(model.backbone, model.head).to(device)
        return evaluate_classifier(network, dataset, batch_size, device)
    if model.task == "segment":
        return evaluate_segment_model(load_finetuned(model.path), root, split, device, batch_size)
    config = DetectDataConfig(root=root, ref_offsets=tuple(data["ref_offsets"]), short_side=int(data["short_side"]),
                              max_size=int(data["max_size"]), normalization=data["normalization"])
    dataset = KUMCDataset(root, split, ref_offsets=config.ref_offsets, transform=detect_transforms(config)[1])
    return evaluate_detector(model.head.to(device), dataset, batch_size, device)
