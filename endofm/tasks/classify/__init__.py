"""PolypDiag classification: the CLS embedding (or the mean or maximum of the patch tokens) and a linear head,
fully fine-tuned or as a linear probe.

The task (:data:`TASK`) is declared here from its parts: :mod:`~endofm.tasks.classify.config` (the configs),
:mod:`~endofm.tasks.classify.data` (datasets and split rules), :mod:`~endofm.tasks.classify.train` (the recipe),
:mod:`~endofm.tasks.classify.inference` (evaluation, prediction, drawing) and :mod:`~endofm.tasks.classify.io`
(the model's files and the released layout); the network is :class:`~endofm.models.classification.ClassifierNetwork`.
"""

from __future__ import annotations

from endofm.data.synthetic.writers import polypdiag_layout
from endofm.models.heads import LinearClassifier
from endofm.tasks.base import DemoSettings, PaperResult, SyntheticLayout, Task
from endofm.tasks.classify.config import CLASSIFY_DEFAULT_DATA, VIEWS, ClassifyConfig, ClassifyDataConfig
from endofm.tasks.classify.data import classify_datasets, polypdiag_dataset
from endofm.tasks.classify.inference import (
    caveat,
    csv_rows,
    draw_frame,
    evaluate_classifier,
    evaluate_classify_model,
    predict_classify,
    predict_probabilities,
)
from endofm.tasks.classify.io import (
    POLYPDIAG_LAYOUT,
    adopt_classifier,
    assemble_classifier,
    input_spec,
    load_polypdiag,
    original_data,
)
from endofm.tasks.classify.train import ClassifyRecipe, finetune_classify
from endofm.tasks.registry import register_task

__all__ = [
    "CLASSIFY_DEFAULT_DATA",
    "POLYPDIAG_LAYOUT",
    "TASK",
    "VIEWS",
    "ClassifyConfig",
    "ClassifyDataConfig",
    "ClassifyRecipe",
    "adopt_classifier",
    "assemble_classifier",
    "caveat",
    "classify_datasets",
    "csv_rows",
    "draw_frame",
    "evaluate_classifier",
    "evaluate_classify_model",
    "finetune_classify",
    "input_spec",
    "load_polypdiag",
    "original_data",
    "polypdiag_dataset",
    "predict_classify",
    "predict_probabilities",
]

TASK = register_task(Task(
    name="classify",
    help="PolypDiag-layout video classification (CLS + linear head; mode=linear for a probe)",
    title="PolypDiag classification",
    dataset="PolypDiag",
    dataset_folders=("polypdiag", "PolypDiag"),
    config_class=ClassifyConfig,
    finetune=finetune_classify,
    build_head=lambda config, backbone: LinearClassifier(**config),
    assemble=assemble_classifier,
    evaluate=evaluate_classify_model,
    predict=predict_classify,
    draw=draw_frame,
    csv_rows=csv_rows,
    paper=PaperResult(metric="binary_f1", label="F1", paper=90.7, released=91.5, split="val"),
    model_name=lambda config: "Endo-FM ViT + linear head on the CLS token",
    released_file="polypdiag.pth",
    layouts=(POLYPDIAG_LAYOUT,),
    adopt=adopt_classifier,
    caveat=caveat,
    synthetic=SyntheticLayout("polypdiag", polypdiag_layout),
    demo=DemoSettings(folder="probe", recipe="classify_cpu", epochs=10, quick_epochs=5),
))
"""The classification task (:mod:`endofm.tasks.base`)."""
