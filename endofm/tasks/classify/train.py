"""Fine-tuning a classifier: cross-entropy on the linear head (fully fine-tuned, or a linear probe).

:func:`finetune_classify` trains on the shared engine, selects the best epoch on a validation split
(:func:`~endofm.tasks.classify.data.classify_datasets`) and reports binary F1 (the original's metric), macro F1,
accuracy and AUROC of that model on the test split.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import default_collate

from endofm.data.datasets.polypdiag import PolypDiagDataset
from endofm.models.backbone import EndoFMBackbone
from endofm.models.classification import ClassifierNetwork
from endofm.models.heads import LinearClassifier
from endofm.tasks.classify.config import ClassifyConfig
from endofm.tasks.classify.data import classify_datasets
from endofm.tasks.classify.inference import evaluate_classifier
from endofm.tasks.finetune import FinetuneRecipe, build_backbone, run_finetune


class ClassifyRecipe(FinetuneRecipe):
    """Cross-entropy on the linear head's logits."""

    task = "classify"
    default_metric = "binary_f1"
    evaluator = evaluate_classifier

    def build_network(self) -> ClassifierNetwork:
        linear = self.config.mode == "linear"
        model = dataclasses.replace(self.config.model, drop_path_rate=0.0) if linear else self.config.model
        backbone = build_backbone(model)
        head = LinearClassifier(backbone.embed_dim, len(PolypDiagDataset.classes), pool=self.config.pool)
        return ClassifierNetwork(backbone, head, freeze_backbone=linear)

    def compute_loss(self, network: nn.Module, batch: dict, epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        logits = network(batch["video"].to(self.device, non_blocking=True))
        labels = torch.as_tensor(batch["label"], device=self.device)
        loss = F.cross_entropy(logits.float(), labels)
        return loss, {"train_accuracy": float((logits.argmax(1) == labels).float().mean())}

    def batch_size(self, batch: dict) -> int:
        return len(batch["label"])

    def parts(self) -> tuple[EndoFMBackbone, nn.Module]:
        return self.network.backbone, self.network.head

    def data_config(self) -> dict[str, Any]:
        data = self.config.data
        return {"num_frames": data.num_frames, "size": data.size, "normalization": data.normalization,
                "sampling": data.sampling, "sampling_rate": data.sampling_rate, "target_fps": data.target_fps,
                "view": data.view, "classes": list(PolypDiagDataset.classes)}


def finetune_classify(config: ClassifyConfig, resume: bool = False) -> dict[str, Any]:
    """Fine-tune (or linear-probe) a classifier; the run folder gets ``model/``, ``metrics.json`` and plots."""
    datasets = classify_datasets(config.data, config.selection.select_on_test, config.run.seed)
    return run_finetune(config, ClassifyRecipe, datasets, default_collate, resume)
