"""The detection networks: the original's STFT (:mod:`~endofm.models.detection.stft`, its state dicts in
:mod:`~endofm.models.detection.stft_state`, its preprocessing in :mod:`~endofm.models.detection.transform`)
and the package's FCOS on a simple pyramid of the backbone (:mod:`~endofm.models.detection.fcos`)."""

from endofm.models.detection.fcos import GlobalFCOSHead, VideoPyramid, build_detector
from endofm.models.detection.stft import STFTConfig, STFTDetector
from endofm.models.detection.stft_postprocess import PostprocessConfig
from endofm.models.detection.stft_state import infer_stft_config, stft_from_state
from endofm.models.detection.transform import CAFFE_MEAN_BGR, STFT_INPUT, resize_frames

__all__ = ["CAFFE_MEAN_BGR", "STFT_INPUT", "GlobalFCOSHead", "PostprocessConfig", "STFTConfig", "STFTDetector",
           "VideoPyramid", "build_detector", "infer_stft_config", "resize_frames",
           "stft_from_state"]
