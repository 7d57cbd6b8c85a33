"""The data layer: video decoding and encoding, normalisation, manifests and transcoding, pretraining views,
fine-tuning transforms and the datasets (the synthetic endoscopy generator is :mod:`endofm.data.synthetic`)."""

from endofm.data.datasets.cvc import CVCDataset
from endofm.data.datasets.kumc import KUMCDataset
from endofm.data.datasets.polypdiag import PolypDiagDataset
from endofm.data.datasets.pretrain import PretrainClips, collate_views
from endofm.data.datasets.splits import check_no_leakage, find_leakage, split_by_case
from endofm.data.manifest import ClipRef, LabelledVideo, read_manifest, read_original_list, scan_videos
from endofm.data.normalization import NORMALIZATION, normalize
from endofm.data.transcode import transcode_videos
from endofm.data.transforms import VideoTransform, eval_transform, train_transform
from endofm.data.video import VideoInfo, VideoReader, read_video_info
from endofm.data.views import MultiViewConfig, MultiViewSampler, ViewSpec

__all__ = [
    "NORMALIZATION",
    "CVCDataset",
    "ClipRef",
    "KUMCDataset",
    "LabelledVideo",
    "MultiViewConfig",
    "MultiViewSampler",
    "PolypDiagDataset",
    "PretrainClips",
    "VideoInfo",
    "VideoReader",
    "VideoTransform",
    "ViewSpec",
    "check_no_leakage",
    "collate_views",
    "eval_transform",
    "find_leakage",
    "normalize",
    "read_manifest",
    "read_original_list",
    "read_video_info",
    "scan_videos",
    "split_by_case",
    "train_transform",
    "transcode_videos",
]
