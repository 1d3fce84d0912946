"""dil_fast.devices: --device resolution, and the suite's rule that tiers T0-T2 run on the CPU."""

import os
import subprocess
import sys

import pytest
import torch

from dil_fast.devices import resolve_device
from dil_fast.errors import FlagError


def test_tiers_below_t3_resolve_to_the_cpu_in_process_and_in_subprocesses():
    assert not torch.cuda.is_available() and os.environ["CUDA_VISIBLE_DEVICES"] == ""
    assert resolve_device(None) == torch.device("cpu")
    code = "import torch; from dil_fast.devices import resolve_device; print(resolve_device(None))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "cpu", done.stderr


@pytest.mark.parametrize(
    "name,needle",
    [("gpu", "not a device name"), ("cuda", "CUDA is not available"), ("meta", "unsupported device type")],
)
def test_bad_device_names_are_flag_errors(name, needle):
    with pytest.raises(FlagError, match=needle):
        resolve_device(name)


def test_explicit_cpu_and_default():
    assert resolve_device("cpu") == torch.device("cpu")
