"""``endofm export``: a model as ONNX, checked by ONNX Runtime against PyTorch before it is kept.

What is exported (each file records what it is in its metadata, key ``endofm``: kind, task, input spec,
classes, preprocessing, so :mod:`endofm.export.runtime` runs it without the original checkpoint):

- a backbone (``embed``): ``clips [B, 3, T, H, W]`` -> ``embedding [B, E]`` (the CLS token);
- the PolypDiag classifier: ``clips`` -> ``logits [B, classes]``;
- the TransUNet segmenter: ``clips`` -> ``logits [B, classes, T, H, W]``;
- the STFT detector as its video inference runs, in two files: ``OUT.onnx``, the per-frame part
  (``frames [N, 3, H, W]`` -> per FPN level ``cls_tower``, ``bbox_tower``, ``bbox_reg``), and
  ``OUT.head.onnx``, the per-key-frame head over the key frame's and its references' parts (``[1 + R, ...]``
  each, key first) -> per level ``cls_logits``, ``centerness``, ``stft_cls_logits``, ``stft_bbox_reg``,
  ``pre_bbox``. Post-processing (thresholds, NMS) is a documented step outside the graph:
  :func:`endofm.export.runtime.stft_postprocess`, the original's in numpy.

The batch axis is dynamic; so is the segmenter's frame axis where ONNX Runtime's outputs at another frame count
equal PyTorch's (checked, else the frame count is fixed and recorded). The classifier takes the frame count it
was trained with, and a backbone the one of its time embedding (resized to another count by PyTorch code that
does not export), both recorded in the file's input spec. The deformable
convolution of the STFT head exports as the package's CPU kernel (``grid_sample`` and a matrix product,
standard operators from opset 16): ONNX's ``DeformConv`` (opset 19) has no ONNX Runtime CPU kernel. The
exporter is PyTorch's TorchScript-based one (``dynamo=False``), which needs no extra package.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from endofm.errors import EndoFMError, ExportError, InputError
from endofm.io import atomic_write
from endofm.models import cpu_kernels
from endofm.models.backbone import EndoFMBackbone
from endofm.models.detection.stft import LEVELS, STFTDetector
from endofm.tasks.base import LoadedFinetuned
from endofm.tasks.results import json_safe

OPSET = 17
FORMAT = "endofm-onnx"
FORMAT_VERSION = 1
FRAME_PARTS = ("cls_tower", "bbox_tower", "bbox_reg")
HEAD_OUTPUTS = ("cls_logits", "centerness", "stft_cls_logits", "stft_bbox_reg", "pre_bbox")
TOLERANCE = 1e-4
"""Largest difference between ONNX Runtime's and PyTorch's outputs an export may show to be kept."""


class _Flat(nn.Module):
    """A model's tensor output as one tensor (the backbone: its CLS embedding)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.model(clips)


class _STFTFrame(nn.Module):
    """The STFT detector's per-frame part: each frame alone through the backbone (a one-frame clip), the FPN
    and the head's towers and box regression, flattened level by level."""

    def __init__(self, model: STFTDetector) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, ...]:
        parts = self.model.head.frame_parts(self.model.backbone(frames.unsqueeze(2)))
        return tuple(level[name] for level in parts for name in FRAME_PARTS)


class _STFTHead(nn.Module):
    """The STFT detector's per-key-frame head over the queued per-frame parts (key frame first)."""

    def __init__(self, model: STFTDetector) -> None:
        super().__init__()
        self.model = model

    def forward(self, *flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        parts = [dict(zip(FRAME_PARTS, flat[i : i + 3], strict=True)) for i in range(0, len(flat), 3)]
        out = self.model.head.fuse(parts)
        return tuple(out[name][level] for level in range(len(parts)) for name in HEAD_OUTPUTS)


def _names(prefix: Sequence[str]) -> list[str]:
    return [f"{level}_{name}" for level in LEVELS for name in prefix]


def _trace(module: nn.Module, args: tuple[torch.Tensor, ...], input_names: list[str], output_names: list[str],
           dynamic: dict[str, dict[int, str]], opset: int) -> bytes:
    """The ONNX bytes of ``module`` traced on ``args``, the package's CPU kernels off (they are autograd
    functions) except the deformable convolution, which is the kernel that exports."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), cpu_kernels.enabled(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(module.eval(), args, buffer, input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic, opset_version=opset, dynamo=False, do_constant_folding=True)
    return buffer.getvalue()


def _ort_outputs(data: bytes, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    from endofm.export.runtime import session_from_bytes

    return session_from_bytes(data).run(None, inputs)


def _max_diff(expected: Sequence[torch.Tensor], got: Sequence[np.ndarray]) -> float:
    return max(float(np.abs(e.detach().numpy() - g).max()) if e.numel() else 0.0
               for e, g in zip(expected, got, strict=True))


def _differs(module: nn.Module, data: bytes, input_name: str, x: torch.Tensor) -> float:
    """Largest difference between ONNX Runtime's and PyTorch's outputs on ``x`` (infinite when ONNX Runtime
    refuses its shape)."""
    with torch.no_grad(), cpu_kernels.enabled(False):
        expected = module(x)
    try:
        got = _ort_outputs(data, {input_name: x.numpy()})
    except Exception:  # noqa: BLE001 - ONNX Runtime's own error types: a shape the graph fixed
        return float("inf")
    return _max_diff([expected] if isinstance(expected, torch.Tensor) else list(expected), got)


def _export_checked(module: nn.Module, example: torch.Tensor, input_name: str, output_names: list[str],
                    batch_axes: dict[str, dict[int, str]], frame_axis: int | None, opset: int
                    ) -> tuple[bytes, dict[str, Any]]:
    """Export with a dynamic frame axis when ONNX Runtime then matches PyTorch at another frame count too, else
    with the frame count fixed; an :class:`ExportError` when ONNX Runtime differs from PyTorch on the example
    or on a batch of two."""
    module = module.eval()
    for dynamic_frames in ([True, False] if frame_axis is not None else [False]):
        axes = {name: dict(value) for name, value in batch_axes.items()}
        if dynamic_frames:
            axes[input_name][frame_axis] = "frames"
        data = _trace(module, (example,), [input_name], output_names, axes, opset)
        diff = _differs(module, data, input_name, example)
        if diff > TOLERANCE:
            raise ExportError(f"ONNX Runtime's outputs differ from PyTorch's by {diff:.2e} (> {TOLERANCE:g})")
        other = torch.cat([example, example.flip(-1)])  # a batch of two, and one frame more where dynamic
        if dynamic_frames:
            other = torch.cat([other, other.narrow(frame_axis, 0, 1)], dim=frame_axis)
        other_diff = _differs(module, data, input_name, other)
        if other_diff > TOLERANCE and dynamic_frames:
            continue
        if other_diff > TOLERANCE:
            raise ExportError(f"ONNX Runtime's outputs on a batch of two differ from PyTorch's by {other_diff:.2e}")
        return data, {"max_abs_diff": max(diff, other_diff), "dynamic_axes": axes[input_name],
                      "example_shape": list(example.shape)}
    raise AssertionError("unreachable")


def _write(path: Path, data: bytes, info: dict[str, Any]) -> Path:
    """The ONNX bytes with ``info`` as the ``endofm`` metadata entry, written atomically."""
    import onnx

    model = onnx.load_from_string(data)
    entry = model.metadata_props.add()
    entry.key, entry.value = "endofm", json.dumps(json_safe(info))
    serialized = model.SerializeToString()
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(serialized))


def _example(size: Sequence[int], frames: int, batch: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, frames, int(size[0]), int(size[1]), generator=generator)


def _base_info(kind: str, task: str, spec: dict[str, Any], source: str, metadata: dict[str, Any],
               opset: int) -> dict[str, Any]:
    return {"format": FORMAT, "version": FORMAT_VERSION, "kind": kind, "task": task, "input": spec,
            "source": source, "metadata": metadata, "opset": opset}


def export_backbone(backbone: EndoFMBackbone, out: str | os.PathLike, spec: dict[str, Any], source: str = "",
                    opset: int = OPSET) -> list[Path]:
    """A backbone as ``clips -> embedding`` (see the module docstring)."""
    frames = int(spec.get("frames") or backbone.config.num_frames)
    data, check = _export_checked(_Flat(backbone), _example(spec["size"], frames), "clips", ["embedding"],
                                  {"clips": {0: "batch"}, "embedding": {0: "batch"}}, None, opset)
    info = _base_info("backbone", "embed", {**spec, "frames": frames}, source, {"embed_dim": backbone.embed_dim},
                      opset)
    return [_write(Path(out), data, {**info, "check": check})]


def export_finetuned(loaded: LoadedFinetuned, out: str | os.PathLike, opset: int = OPSET) -> list[Path]:
    """A fine-tuned model (:func:`~endofm.load_finetuned`) as ONNX: see the module docstring."""
    spec, out = loaded.input_spec.to_dict(), Path(out)
    metadata = {**loaded.metadata, "layout": loaded.layout}
    if loaded.task == "detect":
        if not isinstance(loaded.model, STFTDetector):
            raise ExportError(f"{loaded.path}: only the STFT detector exports (this is a {loaded.layout} model)")
        return _export_stft(loaded.model, out, spec, loaded.path,
                            {**metadata, "postprocess": dataclasses.asdict(loaded.model.postprocess_config)}, opset)
    if loaded.task == "classify":
        frames = int((loaded.metadata.get("data") or {}).get("num_frames") or loaded.input_spec.frames or 8)
        axes, frame_axis = {"clips": {0: "batch"}, "logits": {0: "batch"}}, None  # trained on this many
    elif loaded.task == "segment":
        frames = int(loaded.input_spec.frames or 1)
        axes, frame_axis = {"clips": {0: "batch"}, "logits": {0: "batch", 2: "frames"}}, 2
    else:
        raise ExportError(f"{loaded.path}: a {loaded.task} model does not export")
    data, check = _export_checked(loaded.model, _example(spec["size"], frames), "clips", ["logits"], axes,
                                  frame_axis, opset)
    if "frames" not in check["dynamic_axes"].values():
        spec = {**spec, "frames": frames}
    info = _base_info(loaded.task, loaded.task, spec, loaded.path, metadata, opset)
    return [_write(out, data, {**info, "check": check})]


def head_path(out: str | os.PathLike) -> Path:
    """The head file of an STFT export written to ``out``: ``name.onnx`` -> ``name.head.onnx``."""
    out = Path(out)
    return out.with_name(out.name.removesuffix(".onnx") + ".head.onnx")


def _export_stft(model: STFTDetector, out: Path, spec: dict[str, Any], source: str, metadata: dict[str, Any],
                 opset: int, references: int = 10) -> list[Path]:
    model = model.eval()
    generator = torch.Generator().manual_seed(0)
    height, width = (int(v) for v in spec["size"])
    frames = torch.randn(1 + references, 3, height, width, generator=generator) * 50
    frame_names = _names(FRAME_PARTS)
    frame_axes = {"frames": {0: "batch"}, **{name: {0: "batch"} for name in frame_names}}
    with torch.no_grad(), cpu_kernels.enabled(False):
        parts = _STFTFrame(model)(frames[:2])
    frame_data = _trace(_STFTFrame(model), (frames[:2],), ["frames"], frame_names, frame_axes, opset)
    got = _ort_outputs(frame_data, {"frames": frames.numpy()})
    with torch.no_grad(), cpu_kernels.enabled(False):
        parts = _STFTFrame(model)(frames)
    frame_diff = _max_diff(parts, got)
    head_names = _names(HEAD_OUTPUTS)
    head = _STFTHead(model)
    with torch.no_grad(), cpu_kernels.enabled(False):
        expected = head(*parts)
    head_data = _trace(head, tuple(parts), frame_names, head_names, {}, opset)
    head_diff = _max_diff(expected, _ort_outputs(head_data, dict(zip(frame_names, got, strict=True))))
    relative = head_diff / max(1.0, max(float(e.abs().max()) for e in expected))
    if frame_diff > TOLERANCE * max(1.0, max(float(p.abs().max()) for p in parts)) or relative > TOLERANCE:
        raise ExportError(f"ONNX Runtime's outputs differ from PyTorch's (per-frame part {frame_diff:.2e}, head "
                          f"{head_diff:.2e})")
    head_file = head_path(out)
    info = _base_info("detect-frame", "detect", spec, source, metadata, opset)
    written = [_write(head_file, head_data, {**_base_info("detect-head", "detect", spec, source, metadata, opset),
                                             "references": references, "check": {"max_abs_diff": head_diff}})]
    written.insert(0, _write(out, frame_data, {**info, "head": head_file.name, "references": references,
                                               "check": {"max_abs_diff": frame_diff}}))
    return written


def export_onnx(model: str | os.PathLike | LoadedFinetuned | EndoFMBackbone, out: str | os.PathLike,
                embed: bool = False, model_name: str | None = None, num_heads: int | None = None,
                overwrite: bool = False, int8: bool = False, opset: int = OPSET) -> list[Path]:
    """Export ``model`` (a file any of :func:`~endofm.load_finetuned` reads, with ``embed`` a backbone file:
    :func:`~endofm.create_model` of ``model_name``, else :func:`~endofm.load_checkpoint`; or such a model
    already loaded) to ``out`` (``.onnx``), checked by ONNX Runtime; returns the files written (two for the STFT
    detector). ``int8``: then ONNX Runtime's dynamic quantisation (int8 weights of the matrix products) to
    ``name.int8.onnx`` beside each. An existing file is kept unless ``overwrite``.

    Example:
        >>> export_onnx("polypdiag.pth", "polypdiag.onnx")  # doctest: +SKIP
        [PosixPath('polypdiag.onnx')]
    """
    out = Path(out)
    if out.suffix != ".onnx":
        raise InputError(f"{out}: the exported file's name must end in .onnx")
    planned = [out, head_path(out)]
    if int8:
        planned += [p.with_name(p.name.removesuffix(".onnx") + ".int8.onnx") for p in planned]
    present = [str(p) for p in planned if p.exists()]
    if present and not overwrite:
        raise InputError(f"{', '.join(present)} already exist(s); choose another name or pass --overwrite")
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as error:
        raise ExportError(f"exporting needs onnx and onnxruntime ({error.name} is missing): "
                          "pip install 'endofm[onnx]'") from error
    source = str(model) if isinstance(model, (str, os.PathLike)) else ""
    try:
        if isinstance(model, EndoFMBackbone):
            from endofm.stream.torch_nets import backbone_spec

            written = export_backbone(model, out, backbone_spec(model), source, opset)
        elif isinstance(model, LoadedFinetuned):
            written = export_finetuned(model, out, opset)
        elif embed:
            from endofm.models.checkpoint import load_checkpoint
            from endofm.models.factory import create_model
            from endofm.stream.torch_nets import backbone_spec

            backbone = (create_model(model_name, pretrained=model) if model_name
                        else load_checkpoint(model, num_heads=num_heads).backbone)
            written = export_backbone(backbone.eval(), out, backbone_spec(backbone), source, opset)
        else:
            from endofm.tasks.loading import load_finetuned

            written = export_finetuned(load_finetuned(model, num_heads), out, opset)
    except EndoFMError:
        raise
    except (RuntimeError, TypeError, ValueError) as error:  # the tracer or exporter refused the model
        raise ExportError(f"{source or type(model).__name__}: cannot be exported to ONNX: "
                          f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from error
    if int8:
        written += [quantize_int8(path) for path in list(written)]
    return written


def quantize_int8(path: str | os.PathLike) -> Path:
    """ONNX Runtime's dynamic quantisation of an exported file (int8 weights, activations quantised on the
    fly) to ``name.int8.onnx``, keeping its metadata."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = Path(path)
    target = path.with_name(path.name.removesuffix(".onnx") + ".int8.onnx")
    source = onnx.load(str(path))
    info = json.loads(next(p.value for p in source.metadata_props if p.key == "endofm"))
    if info.get("head"):
        info["head"] = info["head"].removesuffix(".onnx") + ".int8.onnx"

    def write(tmp: str) -> None:
        quantize_dynamic(str(path), tmp, weight_type=QuantType.QInt8)
        model = onnx.load(tmp)
        del model.metadata_props[:]
        entry = model.metadata_props.add()
        entry.key, entry.value = "endofm", json.dumps({**info, "int8": True})
        onnx.save(model, tmp)

    return atomic_write(target, write, suffix=".onnx")
