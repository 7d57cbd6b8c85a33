"""``endofm predict``: apply a fine-tuned model to a user's video, frame by frame.

The model comes from :func:`~endofm.tasks.loading.load_finetuned` (a fine-tuned model folder, or one of the
original's released fine-tuned models), and its task (:data:`~endofm.tasks.registry.TASKS`) predicts, draws
and tabulates (:attr:`Task.predict <endofm.tasks.base.Task.predict>`, ``draw``, ``csv_rows``; each task's
``predict_*`` function says how it covers the video). Outputs in ``out_dir``:

- ``predictions.csv``: one row per frame (classification, segmentation) or per box (detection);
- ``<name>.npz`` for each per-frame array of the prediction (segmentation: ``masks.npz``, the predicted masks,
  uint8 ``[N, size, size]``);
- ``annotated.mp4``: the video with the label and its probability over time, the mask overlay, or the boxes;
- ``predictions.json``: everything, written last: its presence marks a complete result (an older one is
  removed first, and every file is written to a temporary name and renamed when complete).

Boxes are given in the pixel coordinates of the input video.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from endofm.data.encoding import encode_mp4
from endofm.data.video import VideoReader
from endofm.engine.distributed import resolve_device
from endofm.errors import InputError
from endofm.io import atomic_write, atomic_write_text, claim_output
from endofm.tasks.base import LoadedFinetuned, Task
from endofm.tasks.loading import load_finetuned
from endofm.tasks.registry import TASKS
from endofm.tasks.results import json_safe

RESULT_FILES = ("predictions.json", "predictions.csv", "annotated.mp4", "*.npz")
"""The names :func:`predict_video` writes (glob patterns): a folder holding one holds an earlier result."""
DISPLAY_SHORT_SIDE = 360
CHUNK = 64


def _display_size(height: int, width: int) -> tuple[int, int]:
    scale = min(1.0, DISPLAY_SHORT_SIDE / min(height, width))
    return max(2, round(height * scale / 2) * 2), max(2, round(width * scale / 2) * 2)


def _chunks(count: int, size: int = CHUNK) -> Iterator[list[int]]:
    for start in range(0, count, size):
        yield list(range(start, min(start + size, count)))


def write_annotated(path: Path, reader: VideoReader, task: Task, frames: list[dict[str, Any]],
                    arrays: dict[str, np.ndarray] | None = None) -> Path:
    """Decode the video again at display size, draw the predictions (:attr:`Task.draw`) and encode an mp4
    (atomically)."""
    height, width = _display_size(reader.info.height, reader.info.width)
    display = VideoReader(reader.path, size=(height, width))
    scale = (height / reader.info.height, width / reader.info.width)
    arrays = arrays or {}

    def annotated() -> Iterator[np.ndarray]:
        for chunk in _chunks(len(display)):
            for k, image in zip(chunk, display.read(chunk).permute(0, 2, 3, 1).numpy(), strict=True):
                at_frame = {name: array[k] for name, array in arrays.items()}
                yield np.asarray(task.draw(Image.fromarray(image), frames[k], scale, at_frame))

    try:
        return atomic_write(path, lambda tmp: encode_mp4(tmp, annotated(), width, height, reader.info.fps))
    finally:
        display.close()


RUNTIMES = ("torch", "onnxruntime")


def _load(checkpoint: str | os.PathLike, num_heads: int | None, runtime: str) -> LoadedFinetuned:
    """The model to predict with: PyTorch (:func:`load_finetuned`) or an exported file in ONNX Runtime."""
    if runtime not in RUNTIMES:
        raise InputError(f"unknown runtime {runtime!r}; choose from {list(RUNTIMES)}")
    is_onnx = str(checkpoint).endswith(".onnx")
    if runtime == "torch":
        if is_onnx:
            raise InputError(f"{checkpoint}: an ONNX file; run it with --runtime onnxruntime")
        return load_finetuned(checkpoint, num_heads)
    if not is_onnx:
        raise InputError(f"{checkpoint}: --runtime onnxruntime runs an .onnx file of endofm export; export the "
                         "model first (endofm export)")
    if num_heads is not None:
        raise InputError("--num-heads applies to released PyTorch checkpoints, not to an ONNX file")
    from endofm.export.module import load_onnx_finetuned

    return load_onnx_finetuned(checkpoint)


def predict_video(video: str | os.PathLike, checkpoint: str | os.PathLike, out_dir: str | os.PathLike,
                  device: str = "auto", progress: bool = False, num_heads: int | None = None,
                  runtime: str = "torch", overwrite: bool = False, **options: Any) -> dict[str, str]:
    """Apply a fine-tuned model to a video; returns the paths written (see the module docstring).
    ``num_heads`` is for released checkpoints (not stored in them); ``options`` are the tasks' own
    (:attr:`Task.predict_options <endofm.tasks.base.Task.predict_options>`: ``score_threshold``, the lowest
    box score reported, and ``reference_seed``, the seed of the STFT detector's reference draws); a task
    takes those it declares. ``runtime="onnxruntime"`` runs a model exported by ``endofm export`` (an ``.onnx``
    file) in ONNX Runtime, the rest as with PyTorch. A folder holding an earlier prediction is refused unless
    ``overwrite``."""
    claim_output(out_dir, overwrite, folder=True, results=RESULT_FILES)
    unknown = sorted(set(options) - {option.dest for task in TASKS.values() for option in task.predict_options})
    if unknown:
        raise InputError(f"unknown prediction options {unknown}")
    out = Path(out_dir)
    if runtime == "onnxruntime" and device not in ("auto", "cpu"):
        raise InputError(f"--runtime onnxruntime runs on the CPU here; --device {device} applies to torch")
    model = _load(checkpoint, num_heads, runtime)
    task = TASKS[model.task]
    own = {option.dest for option in task.predict_options}
    defaults = {option.dest: option.default for other in TASKS.values() for option in other.predict_options}
    foreign = sorted(key for key, value in options.items() if key not in own and value != defaults[key])
    if foreign:
        flags = ", ".join("--" + key.replace("_", "-") for key in foreign)
        raise InputError(f"{flags}: not an option of a {model.task} model ({checkpoint})")
    torch_device = resolve_device(device)
    with VideoReader(video) as reader:
        prediction = task.predict(model, reader, torch_device, progress,
                                  **{key: value for key, value in options.items() if key in own})
        (out / "predictions.json").unlink(missing_ok=True)
        written: dict[str, str] = {}
        for name, array in prediction.arrays.items():
            buffer = io.BytesIO()
            np.savez_compressed(buffer, **{name: array})
            data = buffer.getvalue()
            written[name] = str(atomic_write(out / f"{name}.npz", lambda tmp, data=data: Path(tmp).write_bytes(data)))
        frames = prediction.report["frames"]
        written["video"] = str(write_annotated(out / "annotated.mp4", reader, task, frames, prediction.arrays))
        header, rows = task.csv_rows(frames)
        text = io.StringIO()
        csv.writer(text).writerows([header, *rows])
        written["csv"] = str(atomic_write_text(out / "predictions.csv", text.getvalue()))
        info = reader.info
        report = {"task": model.task, "checkpoint": str(checkpoint), "input": str(video),
                  "num_frames": info.num_frames, "fps": info.fps, "size": [info.height, info.width],
                  **prediction.report, "files": written}
        written["json"] = str(atomic_write_text(out / "predictions.json", json.dumps(json_safe(report)) + "\n"))
    return written
