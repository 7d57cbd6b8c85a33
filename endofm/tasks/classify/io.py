"""The classifier's files: its input spec, a model folder's network, the original's fine-tuned classifier
adopted from a plain checkpoint, and the released PolypDiag file layout."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from endofm.errors import CheckpointError
from endofm.models.backbone import EndoFMBackbone
from endofm.models.checkpoint import LoadedCheckpoint, load_state
from endofm.models.classification import ClassifierNetwork
from endofm.models.inputs import InputSpec
from endofm.tasks.base import FinetunedModel, LoadedFinetuned, ReleasedLayout, preset_input
from endofm.tasks.classify.config import CLASSIFY_DEFAULT_DATA


def input_spec(data: Mapping[str, Any]) -> InputSpec:
    """The input of a classifier trained with the preprocessing ``data`` records."""
    return preset_input(data["normalization"], (int(data["size"]),) * 2, int(data["num_frames"]),
                        resize="short_side_center_crop")


def assemble_classifier(found: FinetunedModel) -> tuple[nn.Module, InputSpec]:
    """The network and input of a classifier's model folder (its backbone and head as loaded)."""
    return ClassifierNetwork(found.backbone, found.head), input_spec(found.data)


def adopt_classifier(loaded: LoadedCheckpoint, path: str) -> FinetunedModel | None:
    """A model folder or checkpoint that records no task but holds a classifier (the original's fine-tuned
    PolypDiag classifier, converted or not): a classifier with the original's preprocessing."""
    if loaded.classifier is None:
        return None
    return FinetunedModel("classify", loaded.backbone, loaded.classifier, loaded.classifier.config,
                          original_data(loaded.backbone), path, {"source": "original fine-tuned classifier"})


def original_data(backbone: EndoFMBackbone) -> dict[str, Any]:
    """The preprocessing of the original's fine-tuned classifier at the clip size its backbone stores (8 x 224 for
    the released model): a file records no input size but its embeddings do."""
    return {**CLASSIFY_DEFAULT_DATA, "num_frames": backbone.config.num_frames, "size": backbone.config.img_size[0]}


def load_polypdiag(state: dict[str, Any], path: Path, num_heads: int | None) -> LoadedFinetuned:
    """The released PolypDiag classifier (``backbone_state_dict`` + ``state_dict`` with ``linear.*``), read by
    the package's one checkpoint reader (:func:`~endofm.models.checkpoint.load_state`)."""
    loaded = load_state(state, path, num_heads)
    if loaded.classifier is None:
        raise CheckpointError(f"{path}: state_dict holds no 2-D linear.weight (the PolypDiag classifier)")
    data = original_data(loaded.backbone)
    return LoadedFinetuned("classify", ClassifierNetwork(loaded.backbone, loaded.classifier).eval(),
                           input_spec(data), str(path), "polypdiag",
                           {"source": "original fine-tuned PolypDiag classifier", "data": data})


POLYPDIAG_LAYOUT = ReleasedLayout("polypdiag", lambda state: "backbone_state_dict" in state, load_polypdiag)
