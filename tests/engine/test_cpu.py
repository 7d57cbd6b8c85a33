"""The CPU floating-point mode the command and the trainer set."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

PROBE = """
import torch
from endofm.cli.main import main
tiny = torch.full((4,), 1e-39)
before = float((tiny * 2)[0])
main([])
print(before, float((tiny * 2)[0]))
"""


@pytest.mark.skipif(not torch.backends.cpu.get_cpu_capability().startswith("AVX"), reason="x86 only (DAZ/FTZ)")
def test_the_command_flushes_denormals_before_any_work() -> None:
    """Denormals make late training steps about 2x slower on x86; the command treats them as zero."""
    run = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    before, after = (float(v) for v in run.stdout.split()[-2:])
    assert before == pytest.approx(2e-39) and after == 0.0
