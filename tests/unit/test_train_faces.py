"""Real faces: NoDef and MIDRE both learn the 40 AT&T identities at 64x64 on CPU."""

from __future__ import annotations

import pytest

from midre.data import DatasetSpec
from midre.train import TrainConfig, train


@pytest.mark.parametrize("defense", [
    pytest.param({"name": "nodef"}, marks=pytest.mark.slow),  # the defended target is the harder one to train
    {"name": "midre", "a_h": 0.4},
])
def test_att_faces_nodef_and_midre_learn(tmp_path, shared_datasets, defense):
    spec = DatasetSpec(source=str(shared_datasets / "att_faces"), image_size=64, channels=1)
    cfg = TrainConfig(data=spec, arch="cnn-small", defense=defense, epochs=20, batch_size=32, lr=2e-3,
                      augment=("hflip",))
    result = train(cfg, tmp_path)
    # 40 identities, 2 test images each: chance is 2.5%.
    assert result.metrics["test_accuracy"] >= 0.6, result.history[-3:]
