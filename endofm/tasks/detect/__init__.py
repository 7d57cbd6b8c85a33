"""KUMC detection: the original STFT detector (``detector: stft``, the default) or a lighter alternative,
torchvision's FCOS on a simple pyramid of the backbone (``detector: fcos``).

``detector: stft`` trains the original's model as the original does
(:func:`~endofm.tasks.detect.stft_train.finetune_stft`: the key frame and two references as one clip, the FCOS
and STFT losses, SGD with the original's parameter groups and iteration schedule, evaluation through the
original's test-time video path, :mod:`~endofm.tasks.detect.stft_inference`). ``detector: fcos``
(:mod:`endofm.models.detection.fcos`) takes the current frame and its reference frames (``data.ref_offsets``).

The package: :mod:`~endofm.tasks.detect.config` (the run's configuration), :mod:`~endofm.tasks.detect.data`,
:mod:`~endofm.tasks.detect.train` and :mod:`~endofm.tasks.detect.stft_train` (the recipes),
:mod:`~endofm.tasks.detect.inference` and :mod:`~endofm.tasks.detect.stft_inference` (metrics, prediction,
drawing), :mod:`~endofm.tasks.detect.io` (the released ``kumc.pth`` and the STFT's folder). The networks are
in :mod:`endofm.models.detection`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from endofm.data.synthetic.writers import kumc_layout
from endofm.models.detection.fcos import build_detector
from endofm.tasks.base import DemoSettings, PaperResult, SyntheticLayout, Task, TaskOption
from endofm.tasks.detect.config import (
    DetectConfig,
    DetectDataConfig,
    FCOSConfig,
    IterationSchedule,
    STFTModelConfig,
)
from endofm.tasks.detect.inference import (
    assemble,
    csv_rows,
    draw_frame,
    evaluate_detect_model,
    evaluate_detector,
    predict_detect,
)
from endofm.tasks.detect.io import LAYOUT, load_folder, save_folder
from endofm.tasks.detect.stft_inference import detect_video, detect_videos, evaluate_stft
from endofm.tasks.detect.stft_train import STFTRecipe, finetune_stft
from endofm.tasks.detect.train import DetectRecipe, finetune_detect
from endofm.tasks.registry import register_task

__all__ = ["LAYOUT", "TASK", "DetectConfig", "DetectDataConfig", "DetectRecipe", "FCOSConfig", "IterationSchedule",
           "STFTModelConfig", "STFTRecipe", "caveat", "detect_video", "detect_videos", "evaluate_detect_model",
           "evaluate_detector", "evaluate_stft", "finetune_detect", "finetune_stft", "load_folder", "model_name",
           "predict_detect", "save_folder"]


def model_name(config: Mapping[str, Any]) -> str:
    """The detector a run's config trains, in words (``endofm reproduce``'s table)."""
    if config.get("detector") == "stft":
        return "STFT (FCOS with spatial-temporal feature transformation)"
    return "Endo-FM ViT + the package's pyramid and FCOS head (not STFT)"


def caveat(test: Mapping[str, Any]) -> str | None:
    """A sentence when the test metrics show the detector did not learn."""
    return None if test.get("box_f1") else "The detector finds no polyp box at score >= 0.5 and IoU >= 0.5 (box F1 0)."


TASK = register_task(Task(
    name="detect",
    help="KUMC/PolypsSet-layout detection (the original STFT, or detector=fcos; frame F1, box F1, COCO mAP)",
    title="KUMC detection",
    dataset="KUMC/PolypsSet",
    dataset_folders=("kumc", "KUMC", "PolypsSet"),
    config_class=DetectConfig,
    finetune=finetune_detect,
    build_head=lambda config, backbone: build_detector(backbone, **config),
    assemble=assemble,
    evaluate=evaluate_detect_model,
    predict=predict_detect,
    draw=draw_frame,
    csv_rows=csv_rows,
    paper=PaperResult(metric="frame_f1_original", label="F1", paper=84.1, released=84.0, split="val"),
    model_name=model_name,
    released_file="kumc.pth",
    layouts=(LAYOUT,),
    evaluate_options=(TaskOption("--reference-seed", "STFT detector: seed of the test-time reference draws (the "
                                                     "original never seeds them)", type=int, default=0),),
    predict_options=(
        TaskOption("--score-threshold", "detection: lowest box score reported", type=float, default=0.5),
        TaskOption("--reference-seed", "STFT detector: seed of the reference-frame draws (the original never "
                                       "seeds them)", type=int, default=0)),
    caveat=caveat,
    synthetic=SyntheticLayout("kumc", kumc_layout),
    demo=DemoSettings(folder="kumc", recipe="detect_cpu", epochs=4, quick_epochs=2,
                      original_recipe="detect_stft_cpu"),
))
"""The detection task (:mod:`endofm.tasks.base`)."""
