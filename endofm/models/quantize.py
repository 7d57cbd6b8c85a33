"""CPU deployment: dynamic int8 quantisation of a backbone's linear layers.

Weights are quantised once (per output channel, symmetric int8); activations are quantised on the fly per
call, so no calibration data is needed. The patch embedding, norms and attention softmax stay in float32.
Only CPUs run the quantised model.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from endofm.errors import InputError


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (in eval mode) with every ``nn.Linear`` replaced by a dynamic int8 linear layer.

    Example:
        >>> from endofm.models import build_model
        >>> quantized = quantize_int8(build_model("endofm_vit_micro"))
        >>> quantized(torch.randn(1, 3, 4, 64, 64)).shape
        torch.Size([1, 96])
    """
    engines = torch.backends.quantized.supported_engines
    if not any(engine in engines for engine in ("x86", "fbgemm", "qnnpack", "onednn")):
        raise InputError(f"int8 needs a quantised CPU engine; this torch build has {engines}")
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise InputError("int8 quantisation runs on the CPU: move the model to cpu first")
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    qconfig = default_dynamic_qconfig if torch.backends.quantized.engine == "qnnpack" else per_channel_dynamic_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, UserWarning, FutureWarning))
        return quantize_dynamic(model.eval(), {nn.Linear: qconfig}, dtype=torch.qint8, inplace=False)
