"""State dicts: a weights file read safely (:func:`read_state`), and the tools that match one to a network
(:func:`strip_module`, :func:`infer_backbone_config`, :func:`infer_dino_head`, :func:`load_strict`) or tell
which released model it is (:func:`is_stft_state`, :func:`is_transunet_state`).

Files are unpickled with ``weights_only=True``, allowing ``argparse.Namespace`` alone; anything else in a
pickle is refused before it can run.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors
from torch import nn

from endofm.errors import CheckpointError, InputError
from endofm.models.backbone import BackboneConfig
from endofm.models.heads import DINOHead

SAFE_GLOBALS = [argparse.Namespace]
"""The one non-tensor type a checkpoint's pickle may hold (the original's training ``args``)."""


def read_state(path: str | os.PathLike) -> dict:
    """Safely read a ``.pth``/``.pt`` pickle or a ``.safetensors`` file into a dict of tensors and values."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder without config.json; expected a checkpoint file")
    if path.suffix == ".safetensors":
        try:
            return load_safetensors(str(path))
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from error
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported operand" in str(error):  # bytes that are no pickle opcode: not a pickle at all
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle)") from error
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path}: refused to load: the file pickles an object that is not plain tensor data{what}. "
            "Only tensors, containers, numbers and argparse.Namespace are accepted; nothing in the file ran."
        ) from error
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as error:
        reason = str(error).split(". ")[0]  # torch's zip errors go on for several sentences
        raise CheckpointError(f"{path}: truncated or not a PyTorch checkpoint ({reason})") from error
    except (KeyError, IndexError, TypeError, AttributeError) as error:  # bytes the unpickler misreads: a text file
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle)") from error
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a checkpoint dict")
    return dict(state)


def strip_module(state: Mapping, only_if_all: bool = False) -> dict:
    """``state`` without the ``module.`` prefix that ``DataParallel``/``DistributedDataParallel`` put on keys.

    By default every key that has it loses it (the original pretraining and classification loaders); with
    ``only_if_all`` the prefix is removed only when every key has it, else the keys stay as they are (the
    original detection and segmentation loaders, maskrcnn-benchmark's ``strip_prefix_if_present``).

    Example:
        >>> strip_module({"module.a": 1, "b": 2})
        {'a': 1, 'b': 2}
        >>> strip_module({"module.a": 1, "b": 2}, only_if_all=True)
        {'module.a': 1, 'b': 2}
    """
    if only_if_all and not (state and all(str(key).startswith("module.") for key in state)):
        return dict(state)
    return {key.removeprefix("module."): value for key, value in state.items()}


def infer_backbone_config(state: Mapping[str, torch.Tensor], num_heads: int | None = None) -> BackboneConfig:
    """Architecture of a backbone state dict, read off its tensor shapes.

    The head count cannot be read off shapes; it defaults to ``embed_dim // 64`` (the released models).
    """
    required = ("cls_token", "pos_embed", "time_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight")
    missing = [key for key in required if key not in state]
    if missing:
        raise CheckpointError(f"not an Endo-FM backbone: missing {missing}")
    dim = state["cls_token"].shape[-1]
    patch = state["patch_embed.proj.weight"].shape[-1]
    depth = 1 + max(int(m.group(1)) for key in state if (m := re.match(r"blocks\.(\d+)\.", key)))
    positions = state["pos_embed"].shape[1] - 1
    grid = round(positions**0.5)
    if grid * grid != positions:
        raise CheckpointError(f"pos_embed holds {positions} patch positions, not a square grid")
    if num_heads is None:
        if dim % 64:
            raise CheckpointError(
                f"cannot infer the number of heads for embed dim {dim} (not a multiple of 64); "
                "pass num_heads (--num-heads on the command line, model.num_heads in a recipe)"
            )
        num_heads = dim // 64
    if dim % num_heads:
        raise CheckpointError(f"num_heads={num_heads} does not divide the embed dim {dim}")
    return BackboneConfig(
        embed_dim=dim,
        depth=depth,
        num_heads=num_heads,
        patch_size=patch,
        img_size=(grid * patch, grid * patch),
        num_frames=state["time_embed"].shape[1],
        mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / dim,
        qkv_bias="blocks.0.attn.qkv.bias" in state,
    )


def infer_dino_head(state: Mapping[str, torch.Tensor]) -> DINOHead:
    """A DINO head shaped like the ``head.*`` dict ``state`` (keys without the ``head.`` prefix)."""
    if "last_layer.weight_v" not in state:
        raise CheckpointError("DINO head without last_layer.weight_v/weight_g")
    out_dim, bottleneck = state["last_layer.weight_v"].shape
    if "mlp.weight" in state:
        return DINOHead(state["mlp.weight"].shape[1], out_dim, bottleneck_dim=bottleneck, num_layers=1)
    indices = sorted({int(m.group(1)) for key in state if (m := re.match(r"mlp\.(\d+)\.weight$", key))})
    linears = [i for i in indices if state[f"mlp.{i}.weight"].ndim == 2]
    use_bn = any(key.endswith("running_mean") for key in state)
    first = state[f"mlp.{linears[0]}.weight"]
    return DINOHead(
        in_dim=first.shape[1],
        out_dim=out_dim,
        hidden_dim=first.shape[0],
        bottleneck_dim=bottleneck,
        num_layers=len(linears),
        use_bn=use_bn,
        norm_last_layer=True,
    )


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], what: str, path: str) -> None:
    """Load ``state`` into ``module`` exactly, or raise a :class:`CheckpointError` naming ``path``, the ``what``
    (e.g. ``"backbone"``) and every missing, unexpected or misshapen key."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(key for key in set(own) & set(state) if own[key].shape != state[key].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        if wrong:
            parts.append(
                "shape mismatch " + ", ".join(f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong)
            )
        raise CheckpointError(f"{path}: the {what} does not fit: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)


STFT_REQUIRED_SUFFIXES = ("backbone.body.cls_token", "backbone.body.pos_embed", "backbone.fpn.fpn_inner4.weight",
                          "rpn.head.cls_logits.weight", "rpn.head.dcn_cls_subnet.conv_offset.weight",
                          "rpn.head.bbox_pred.weight")
"""Key endings every STFT detector state dict has."""


def is_stft_state(state: Mapping[str, Any]) -> bool:
    """Whether a state dict (or a ``{"model": ...}`` checkpoint) holds an STFT detector's keys (the released
    ``kumc.pth``)."""
    model = state.get("model", state)
    if not isinstance(model, Mapping):
        return False
    keys = [str(k) for k in model]
    return all(any(k.endswith(suffix) for k in keys) for suffix in STFT_REQUIRED_SUFFIXES)


def is_transunet_state(state: Mapping[str, Any]) -> bool:
    """Whether a state dict is the original's TransUNet (the released ``cvc.pth``), with or without the
    ``module.`` prefix of ``DataParallel``."""
    return "transformer.encoder.cls_token" in strip_module(state, only_if_all=True)
