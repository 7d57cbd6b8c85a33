"""Datasets built on the data layer."""

from endofm.data.datasets.pretrain import PretrainClips, collate_views

__all__ = ["PretrainClips", "collate_views"]
