"""One device rule for training, the pipeline and attack evaluation (and the serving runtime)."""

from __future__ import annotations

import pytest
import torch

from midre.device import resolve_device


def test_auto_is_cuda_when_present_else_cpu():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_cuda_is_refused_before_any_work():
    with pytest.raises(ValueError, match="CUDA was requested"):
        resolve_device("cuda:0")


def test_a_name_that_is_no_device_is_a_value_error():
    with pytest.raises(ValueError, match="'gpu0' is not a device"):
        resolve_device("gpu0")


def test_training_and_studies_use_the_one_rule():
    import midre.context
    import midre.train

    assert midre.train.resolve_device is resolve_device and midre.context.resolve_device is resolve_device
