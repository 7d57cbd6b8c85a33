"""Fine-tuning a detector (``endofm finetune detect``): the FCOS recipe (:class:`DetectRecipe`) here, the
original STFT's in :mod:`~endofm.tasks.detect.stft_train`; :func:`finetune_detect` runs the one the config
names."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FCOS

from endofm.data.datasets.kumc import KUMCDataset
from endofm.models.backbone import EndoFMBackbone
from endofm.models.detection.fcos import build_detector
from endofm.tasks.detect.config import DetectConfig
from endofm.tasks.detect.data import collate_detection, detect_datasets
from endofm.tasks.detect.inference import evaluate_detector
from endofm.tasks.detect.stft_train import finetune_stft
from endofm.tasks.finetune import FinetuneRecipe, build_backbone, run_finetune


class DetectRecipe(FinetuneRecipe):
    """FCOS losses (focal classification, GIoU regression, centreness), summed."""

    task = "detect"
    default_metric = "map_50"
    evaluator = evaluate_detector

    def build_network(self) -> FCOS:
        det, data = self.config.fcos, self.config.data
        return build_detector(build_backbone(self.config.model), len(KUMCDataset.classes), len(data.ref_offsets) + 1,
                              det.out_channels, det.head_convs, data.short_side, data.max_size, det.score_thresh,
                              det.nms_thresh, det.detections_per_img)

    def compute_loss(self, network: nn.Module, batch: dict, epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        images = [image.to(self.device, non_blocking=True) for image in batch["images"]]
        targets = [{"boxes": t["boxes"].to(self.device), "labels": t["labels"].to(self.device) + 1}
                   for t in batch["targets"]]
        losses = network(images, targets)
        return sum(losses.values()), {k: float(v.detach()) for k, v in losses.items()}

    def batch_size(self, batch: dict) -> int:
        return len(batch["images"])

    def parts(self) -> tuple[EndoFMBackbone, nn.Module]:
        return self.network.backbone.backbone, self.network

    def data_config(self) -> dict[str, Any]:
        data = self.config.data
        return {"ref_offsets": list(data.ref_offsets), "short_side": data.short_side, "max_size": data.max_size,
                "normalization": data.normalization, "classes": list(KUMCDataset.classes)}


def finetune_detect(config: DetectConfig, resume: bool = False) -> dict[str, Any]:
    """Fine-tune a detector; the run folder gets ``model/``, ``metrics.json`` and plots."""
    if config.detector == "stft":
        return finetune_stft(config, resume)
    datasets = detect_datasets(config.data, config.selection.select_on_test, config.run.seed)
    return run_finetune(config, DetectRecipe, datasets, collate_detection, resume)
