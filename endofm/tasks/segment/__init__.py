"""CVC-12k segmentation: the original TransUNet on Endo-FM, or a lighter decoder on the backbone's patch tokens.

``segmenter: transunet`` (the default) trains the original's model
(:mod:`endofm.models.segmentation.transunet`); ``segmenter: decoder`` the cheaper
:class:`~endofm.models.segmentation.decoder.SegmentationDecoder`. The loss is 0.5 cross-entropy + 0.5 soft
Dice; metrics are Dice and HD95 per sequence, averaged.

Modules: :mod:`~endofm.tasks.segment.config` (the run's settings), :mod:`~endofm.tasks.segment.data`
(transforms, datasets, splits), :mod:`~endofm.tasks.segment.losses`, :mod:`~endofm.tasks.segment.train`
(the recipe), :mod:`~endofm.tasks.segment.inference` (evaluate, predict, draw) and
:mod:`~endofm.tasks.segment.io` (the released ``cvc.pth`` layout and the saved folders); this module declares
the task (:data:`TASK`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from endofm.data.synthetic.writers import cvc_layout
from endofm.models.segmentation import SegmentationDecoder
from endofm.tasks.base import DemoSettings, PaperResult, SyntheticLayout, Task, TaskOption
from endofm.tasks.registry import register_task
from endofm.tasks.segment.config import (
    SEGMENTERS,
    DecoderConfig,
    SegmentConfig,
    SegmentDataConfig,
    TransUNetPartsConfig,
)
from endofm.tasks.segment.data import (
    SegmentTransform,
    dataset_overrides,
    input_transform,
    segment_datasets,
    segment_transforms,
)
from endofm.tasks.segment.inference import (
    PREDICT_WINDOW,
    csv_rows,
    draw_frame,
    evaluate_segment_model,
    evaluate_segmenter,
    predict_segment,
)
from endofm.tasks.segment.io import LAYOUT, TRANSUNET_INPUT, assemble_network, save_transunet_folder
from endofm.tasks.segment.losses import dice_loss, segmentation_loss
from endofm.tasks.segment.train import SegmentRecipe, finetune_segment


def model_name(config: Mapping[str, Any]) -> str:
    """The segmenter a run's config trains, in words (``endofm reproduce``'s table)."""
    if config.get("segmenter") == "transunet":
        return "TransUNet (R50-ViT hybrid on Endo-FM's blocks)"
    return "Endo-FM ViT + the package's decoder on patch tokens (not TransUNet)"


def caveat(test: Mapping[str, Any]) -> str | None:
    """A sentence when the test metrics show the segmenter did not learn."""
    return None if test.get("dice") else "The segmenter's Dice is 0: it predicts (almost) no polyp pixels."


TASK = register_task(Task(
    name="segment",
    help="CVC-ClinicDB-layout segmentation (the original TransUNet, or segmenter=decoder on the patch tokens; "
         "Dice/HD95 per sequence)",
    title="CVC-12k segmentation",
    dataset="CVC-ClinicDB",
    dataset_folders=("cvc", "CVC-ClinicDB", "CVC-12k", "CVC"),
    config_class=SegmentConfig,
    finetune=finetune_segment,
    build_head=lambda config, backbone: SegmentationDecoder(**config),
    assemble=assemble_network,
    evaluate=evaluate_segment_model,
    predict=predict_segment,
    draw=draw_frame,
    csv_rows=csv_rows,
    paper=PaperResult(metric="dice", label="Dice", paper=73.9, released=76.6, split="test"),
    model_name=model_name,
    released_file="cvc.pth",
    layouts=(LAYOUT,),
    evaluate_options=(TaskOption("--empty-rule", "Dice of empty masks (default: the model's training rule, else "
                                                 "standard)", choices=("standard", "original")),),
    dataset_overrides=dataset_overrides,
    caveat=caveat,
    synthetic=SyntheticLayout("cvc", cvc_layout),
    demo=DemoSettings(folder="cvc", recipe="segment_cpu", epochs=12, quick_epochs=4,
                      original_recipe="segment_transunet_cpu"),
))
"""The segmentation task (:mod:`endofm.tasks.base`)."""

__all__ = [
    "LAYOUT",
    "PREDICT_WINDOW",
    "SEGMENTERS",
    "TASK",
    "TRANSUNET_INPUT",
    "DecoderConfig",
    "SegmentConfig",
    "SegmentDataConfig",
    "SegmentRecipe",
    "SegmentTransform",
    "TransUNetPartsConfig",
    "assemble_network",
    "caveat",
    "csv_rows",
    "dataset_overrides",
    "dice_loss",
    "draw_frame",
    "evaluate_segment_model",
    "evaluate_segmenter",
    "finetune_segment",
    "input_transform",
    "model_name",
    "predict_segment",
    "save_transunet_folder",
    "segment_datasets",
    "segment_transforms",
    "segmentation_loss",
]
