"""The data layer: video decoding, manifests, pretraining views and datasets."""

from endofm.data.manifest import ClipRef, LabelledVideo, read_manifest, read_original_list, scan_videos
from endofm.data.video import NORMALIZATION, VideoInfo, VideoReader, normalize, read_video_info
from endofm.data.views import MultiViewConfig, MultiViewSampler, ViewSpec

__all__ = [
    "NORMALIZATION",
    "ClipRef",
    "LabelledVideo",
    "MultiViewConfig",
    "MultiViewSampler",
    "VideoInfo",
    "VideoReader",
    "ViewSpec",
    "normalize",
    "read_manifest",
    "read_original_list",
    "read_video_info",
    "scan_videos",
]

# Synthetic data, fine-tuning transforms and datasets.
from endofm.data.datasets.cvc import CVCDataset  # noqa: E402
from endofm.data.datasets.kumc import KUMCDataset  # noqa: E402
from endofm.data.datasets.polypdiag import PolypDiagDataset  # noqa: E402
from endofm.data.datasets.splits import check_no_leakage, find_leakage, split_by_case  # noqa: E402
from endofm.data.synthetic import render_video, write_synthetic_corpus  # noqa: E402
from endofm.data.transforms import VideoTransform, eval_transform, train_transform  # noqa: E402

__all__ += [
    "CVCDataset",
    "KUMCDataset",
    "PolypDiagDataset",
    "VideoTransform",
    "check_no_leakage",
    "eval_transform",
    "find_leakage",
    "render_video",
    "split_by_case",
    "train_transform",
    "write_synthetic_corpus",
]
