"""Segmentation fine-tuning: the recipe (0.5 CE + 0.5 Dice on per-frame logits) and :func:`finetune_segment`.

``segmenter: transunet`` trains the original's model (:mod:`endofm.models.segmentation.transunet`): Endo-FM's
blocks, final norm and CLS token from ``model.init`` inside an R50-ViT hybrid with a U-Net decoder, saved in
its own folder format (:mod:`endofm.tasks.segment.io`). ``segmenter: decoder`` trains the cheaper
:class:`~endofm.models.segmentation.decoder.SegmentationDecoder` on the backbone's patch tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import default_collate

from endofm.engine.cpu import loader_workers
from endofm.models.backbone import EndoFMBackbone
from endofm.models.segmentation import SegmentationDecoder, SegmentationNetwork, TransUNet
from endofm.tasks.finetune import FinetuneRecipe, build_backbone, run_finetune
from endofm.tasks.segment.config import SegmentConfig
from endofm.tasks.segment.data import segment_datasets
from endofm.tasks.segment.inference import evaluate_segmenter
from endofm.tasks.segment.io import save_transunet_folder
from endofm.tasks.segment.losses import segmentation_loss


class SegmentRecipe(FinetuneRecipe):
    """0.5 CE + 0.5 Dice on per-frame logits."""

    task = "segment"
    default_metric = "dice"
    evaluator = evaluate_segmenter

    @classmethod
    def one_sample_per_process(cls, config: SegmentConfig) -> str | None:
        if config.data.clip_length is None:
            return "data.clip_length null (whole sequences of different lengths)"
        return None

    def build_network(self) -> nn.Module:
        config = self.config
        backbone = build_backbone(config.model)
        if config.segmenter == "transunet":
            sizes = config.transunet
            return TransUNet.from_backbone(backbone, resnet_width=sizes.resnet_width, resnet_units=sizes.resnet_units,
                                           decoder_channels=sizes.decoder_channels, n_skip=sizes.n_skip,
                                           dropout=sizes.dropout, drop_path_rate=config.model.drop_path_rate)
        decoder = SegmentationDecoder(backbone.embed_dim, backbone.patch_size, 2, config.decoder.channels,
                                      config.decoder.stem)
        return SegmentationNetwork(backbone, decoder)

    def evaluate(self, dataset: Any) -> dict[str, Any]:
        run = self.config.run
        return evaluate_segmenter(self.network, dataset, run.batch_size, self.device,
                                  loader_workers(run.num_workers), self.config.empty_rule)

    def compute_loss(self, network: nn.Module, batch: dict, epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        logits = network(batch["video"].to(self.device, non_blocking=True))
        squared = self.config.dice_denominator == "squared"
        return segmentation_loss(logits, batch["mask"].to(self.device), squared=squared), {}

    def batch_size(self, batch: dict) -> int:
        return len(batch["video"])

    def parts(self) -> tuple[EndoFMBackbone, nn.Module]:
        return self.network.backbone, self.network.decoder

    def save_model(self, directory: Path, extra: dict[str, Any]) -> Path:
        if isinstance(self.network, TransUNet):
            return save_transunet_folder(directory, self.network, self.config.data.input_spec(),
                                         {"data": self.data_config(), **extra})
        return super().save_model(directory, extra)

    def data_config(self) -> dict[str, Any]:
        data = self.config.data
        return {"clip_length": data.clip_length, "size": data.size, "normalization": data.normalization,
                "channel_order": data.channel_order, "minmax": data.minmax, "empty_rule": self.config.empty_rule,
                "mask_threshold": data.mask_threshold}


def finetune_segment(config: SegmentConfig, resume: bool = False) -> dict[str, Any]:
    """Fine-tune a segmentation model; the run folder gets ``model/``, ``metrics.json`` and plots."""
    datasets = segment_datasets(config.data, config.selection.select_on_test, config.run.seed)
    return run_finetune(config, SegmentRecipe, datasets, default_collate, resume)
