"""Segmentation networks: the original's TransUNet (:mod:`~endofm.models.segmentation.transunet`) and the
package's lighter decoder on the backbone's patch tokens (:mod:`~endofm.models.segmentation.decoder`)."""

from endofm.models.segmentation.decoder import SegmentationDecoder, SegmentationNetwork
from endofm.models.segmentation.transunet import (
    TransUNet,
    TransUNetConfig,
    infer_transunet_config,
    load_transunet_state,
    save_transunet,
)

__all__ = [
    "SegmentationDecoder",
    "SegmentationNetwork",
    "TransUNet",
    "TransUNetConfig",
    "infer_transunet_config",
    "load_transunet_state",
    "save_transunet",
]
