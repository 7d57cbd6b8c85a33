"""The video classifier: the backbone's clip embedding read by a linear head (PolypDiag fine-tuning)."""

from __future__ import annotations

import torch
from torch import nn

from endofm.models.backbone import EndoFMBackbone
from endofm.models.heads import LinearClassifier


class ClassifierNetwork(nn.Module):
    """Backbone clip embedding (the head's ``pool``) -> linear head; with ``freeze_backbone`` the backbone stays
    frozen in eval mode."""

    def __init__(self, backbone: EndoFMBackbone, head: LinearClassifier, freeze_backbone: bool = False) -> None:
        super().__init__()
        self.backbone, self.head, self.freeze_backbone = backbone, head, freeze_backbone
        if freeze_backbone:
            backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> ClassifierNetwork:
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone):
            features = self.backbone.forward_pooled(video, self.head.pool)
        return self.head(features)
