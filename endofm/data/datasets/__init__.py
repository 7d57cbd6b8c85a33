"""Datasets of the original layouts (PolypDiag, CVC-ClinicDB, KUMC) and of pretraining clips."""

from endofm.data.datasets.cvc import CVCDataset
from endofm.data.datasets.kumc import KUMCDataset
from endofm.data.datasets.polypdiag import PolypDiagDataset
from endofm.data.datasets.pretrain import PretrainClips, collate_views

__all__ = ["CVCDataset", "KUMCDataset", "PolypDiagDataset", "PretrainClips", "collate_views"]
