"""The STFT detector's preprocessing as the original's: frames stretched to a square with PIL's bilinear
resize (:func:`resize_frames`), then BGR, 0-255, minus the Caffe mean (:data:`STFT_INPUT`).

Example:
    >>> import numpy as np
    >>> frames = resize_frames(np.zeros((2, 30, 50, 3), dtype=np.uint8), 64)
    >>> STFT_INPUT.normalize(frames).transpose(0, 1).shape  # the detector's input [N, 3, H, W]
    torch.Size([2, 3, 64, 64])
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from endofm.errors import InputError
from endofm.models.inputs import InputSpec

CAFFE_MEAN_BGR = (102.9801, 115.9465, 122.7717)
"""The original's ``PIXEL_MEAN``: frames are BGR, 0-255, minus this mean (std 1)."""
STFT_INPUT = InputSpec(size=(640, 640), frames=None, channel_order="BGR", mean=CAFFE_MEAN_BGR, std=(1.0, 1.0, 1.0),
                       value_scale=255.0, resize="stretch")
"""The original KUMC input: 640 x 640 (stretched, PIL bilinear), BGR, 0-255 minus the Caffe mean, std 1; the
key frame and its references, each through the backbone alone."""


def resize_frames(frames: torch.Tensor | np.ndarray, size: int | tuple[int, int] = 640) -> torch.Tensor:
    """uint8 RGB frames ``[N, H, W, 3]`` or ``[N, 3, H, W]`` -> uint8 ``[N, 3, h, w]`` at ``size`` (a square by
    default, aspect ratio not kept), PIL bilinear as the original's ``Resize``."""
    array = frames.cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if array.ndim != 4 or array.dtype != np.uint8 or 3 not in (array.shape[1], array.shape[-1]):
        raise InputError(f"expected uint8 RGB frames [N, H, W, 3], got {array.dtype} {array.shape}")
    if array.shape[-1] != 3:
        array = array.transpose(0, 2, 3, 1)
    height, width = (size, size) if isinstance(size, int) else size
    resized = [np.asarray(Image.fromarray(frame).resize((width, height), Image.BILINEAR))
               if frame.shape[:2] != (height, width) else frame for frame in array]
    return torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).contiguous()
