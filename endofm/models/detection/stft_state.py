"""The original STFT detector's state dicts: reading their sizes (:func:`infer_stft_config`) and loading them
strictly, keys matched as the original's loader matches them (:func:`stft_from_state`)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

import torch

from endofm.errors import CheckpointError, InputError
from endofm.models.detection.stft import STFTConfig, STFTDetector
from endofm.models.state import STFT_REQUIRED_SUFFIXES, infer_backbone_config, strip_module


def infer_stft_config(state: Mapping[str, torch.Tensor], num_heads: int | None = None) -> STFTConfig:
    """Sizes of an STFT state dict (original key names), read off its tensor shapes; the head count
    defaults to ``embed_dim // 64``."""
    body = {k[len("backbone.body."):]: v for k, v in state.items() if k.startswith("backbone.body.")}
    try:
        backbone = infer_backbone_config(body, num_heads)
    except CheckpointError as error:
        raise CheckpointError(f"the STFT body is not an Endo-FM ViT: {error}") from error
    towers = {int(m.group(1)) for k in state if (m := re.match(r"rpn\.head\.cls_tower\.(\d+)\.weight$", k))}
    offset = state["rpn.head.dcn_cls_subnet.conv_offset.weight"]
    kernel = state["rpn.head.dcn_cls_subnet.conv_adaption.weight"].shape[-1]
    return STFTConfig(backbone=dataclasses.replace(backbone, drop_path_rate=0.0),
                      out_channels=state["backbone.fpn.fpn_inner4.weight"].shape[0],
                      num_convs=len(towers) // 2 if towers else 0,
                      num_classes=state["rpn.head.cls_logits.weight"].shape[0],
                      deformable_groups=offset.shape[0] // (2 * kernel * kernel))


def match_suffixes(model_keys: Sequence[str], loaded: Mapping[str, torch.Tensor]) -> tuple[dict, list, list]:
    """The original loader's key matching: each model key takes the longest loaded key that is a suffix of
    it. Returns (matched state, model keys without a match, loaded keys that matched nothing)."""
    matched: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing = []
    for key in model_keys:
        candidates = [name for name in loaded if key.endswith(name)]
        if not candidates:
            missing.append(key)
            continue
        best = max(candidates, key=len)
        matched[key] = loaded[best]
        used.add(best)
    return matched, missing, sorted(set(loaded) - used)


def stft_from_state(state: Mapping[str, torch.Tensor], num_heads: int | None = None,
                    where: str = "state dict") -> STFTDetector:
    """An :class:`STFTDetector` (eval mode) from an original-layout state dict, strictly loaded: a key the
    model has and the file lacks, a key nothing reads, or a shape that differs is an error naming it."""
    state = strip_module(state)
    canonical = {}
    for suffix in STFT_REQUIRED_SUFFIXES:
        if not any(k.endswith(suffix) for k in state):
            raise CheckpointError(f"{where}: not an STFT detector checkpoint (no key ending in {suffix!r})")
    # Build with the canonical names the original model has, then match as the original loader does.
    for key in state:
        cut = key.find("backbone.")
        cut = key.find("rpn.head.") if cut < 0 else cut
        canonical[key[cut:] if cut >= 0 else key] = state[key]
    try:
        model = STFTDetector(infer_stft_config(canonical, num_heads))
    except (KeyError, InputError) as error:
        raise CheckpointError(f"{where}: cannot read the STFT sizes ({error})") from error
    own = model.state_dict()
    matched, missing, unused = match_suffixes(list(own), state)
    wrong = [f"{k}: {tuple(matched[k].shape)} vs {tuple(own[k].shape)}" for k in matched
             if matched[k].shape != own[k].shape]
    if missing or unused or wrong:
        parts = [f"missing keys {missing}"] if missing else []
        parts += [f"unexpected keys {unused}"] if unused else []
        parts += ["shape mismatch " + ", ".join(wrong)] if wrong else []
        raise CheckpointError(f"{where}: the STFT detector does not fit: " + "; ".join(parts))
    model.load_state_dict(matched, strict=True)
    return model.eval()
