"""Trainer tests: every defense trains, checkpoints reload identically, resume and cancel work."""

from __future__ import annotations

import json

import pytest
import torch

from midre.checkpoint import load_checkpoint
from midre.cli import main as cli_main
from midre.data import DatasetSpec, load_dataset, to_float
from midre.progress import Cancelled
from midre.train import TrainConfig, train

DIGITS = DatasetSpec(source="digits", image_size=16, channels=1)


def quick(defense, **kw) -> TrainConfig:
    return TrainConfig(data=DIGITS, arch="cnn-small", defense=defense, epochs=kw.pop("epochs", 2),
                       batch_size=128, lr=3e-3, **kw)


@pytest.mark.parametrize(
    "defense",
    [{"name": "nodef"}, {"name": "midre", "a_h": 0.4}, {"name": "midre", "a_e": 0.3},
     {"name": "fixed-erasing", "a_h": 0.4}, {"name": "entire-erasing", "share": 0.3}],
)
def test_each_defense_learns_digits(tmp_path, defense):
    result = train(quick(defense, epochs=3), tmp_path)
    assert result.metrics["test_accuracy"] > 0.5  # chance is 0.1
    card = json.loads((tmp_path / "model.json").read_text())
    assert card["defense"]["name"] == defense["name"]
    assert card["num_classes"] == 10 and card["class_names"][0] == "0"
    assert {"torch", "torchvision", "midre"} <= set(card["versions"])


def test_checkpoint_reloads_with_identical_predictions(tmp_path):
    result = train(quick({"name": "midre"}), tmp_path)
    model, card = load_checkpoint(tmp_path)
    splits = load_dataset(DIGITS)
    x = to_float(splits.test.images, splits.normalization)
    model2, _ = load_checkpoint(tmp_path)
    assert torch.equal(model(x), model2(x))
    acc = float((model(x).argmax(1) == splits.test.labels).float().mean())
    assert acc == pytest.approx(result.metrics["test_accuracy"])


def test_seeded_runs_are_identical(tmp_path):
    a = train(quick({"name": "midre"}, epochs=1), tmp_path / "a")
    b = train(quick({"name": "midre"}, epochs=1), tmp_path / "b")
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"]
    c = train(quick({"name": "midre"}, epochs=1, seed=1), tmp_path / "c")
    assert c.history[0]["train_loss"] != a.history[0]["train_loss"]


def stop_in_second_epoch(batch_size: int = 128):
    """A ``should_stop`` that turns true a few steps into the second epoch of a digits run."""
    calls = {"n": 0}
    steps_per_epoch = -(-len(load_dataset(DIGITS).train) // batch_size)

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > steps_per_epoch + 2

    return stop


def test_cancel_then_resume_matches_an_uninterrupted_run(tmp_path):
    full = train(quick({"name": "midre"}, epochs=2), tmp_path / "full")
    with pytest.raises(Cancelled):
        train(quick({"name": "midre"}, epochs=2), tmp_path / "resumed", should_stop=stop_in_second_epoch())
    assert (tmp_path / "resumed" / "checkpoint" / "last.pt").is_file()
    events = []
    resumed = train(quick({"name": "midre"}, epochs=2), tmp_path / "resumed", progress=events.append)
    assert any("resumed after epoch 1" in e.message for e in events)
    assert resumed.history == full.history  # same numbers as if it had never stopped
    assert not (tmp_path / "resumed" / "checkpoint").exists()


def test_finished_run_is_not_trained_again_and_other_runs_refused(tmp_path):
    train(quick({"name": "nodef"}, epochs=1), tmp_path)
    events = []
    train(quick({"name": "nodef"}, epochs=1), tmp_path, progress=events.append)
    assert [e.stage for e in events] == ["done"]
    calls = {"n": 0}
    steps_per_epoch = -(-len(load_dataset(DIGITS).train) // 128)

    def stop_in_second_epoch() -> bool:
        calls["n"] += 1
        return calls["n"] > steps_per_epoch + 1

    with pytest.raises(Cancelled):
        train(quick({"name": "midre"}, epochs=2), tmp_path / "x", should_stop=stop_in_second_epoch)
    with pytest.raises(ValueError, match="out_dir"):
        train(quick({"name": "nodef"}, epochs=2), tmp_path / "x")


@pytest.mark.parametrize(
    "change,field",
    [({"arch": "resnet9000"}, "arch"), ({"defense": {"name": "midre", "a_h": 3}}, "defense.a_h"),
     ({"epochs": 0}, "epochs"), ({"optimizer": "lion"}, "optimizer"), ({"lr": -1}, "lr"),
     ({"augment": ("rotate",)}, "augment"), ({"device": "tpu"}, "device")],
)
def test_bad_config_names_the_field(change, field):
    kw = {"data": DIGITS, **change}
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        TrainConfig(**kw)


def test_from_dict_round_trip_and_unknown_key():
    cfg = quick({"name": "midre", "a_h": 0.8})
    again = TrainConfig.from_dict(cfg.to_dict())
    assert again.fingerprint() == cfg.fingerprint()
    with pytest.raises(ValueError, match="epochz"):
        TrainConfig.from_dict({**cfg.to_dict(), "epochz": 3})
    with pytest.raises(ValueError, match="data.colour"):
        TrainConfig.from_dict({**cfg.to_dict(), "data": {"source": "digits", "colour": 1}})


def test_cli_train_writes_checkpoint(tmp_path, capsys):
    rc = cli_main(["train", "--data", "digits", "--image-size", "16", "--channels", "1", "--arch", "cnn-small",
                   "--defense", "midre", "--a-h", "0.4", "--epochs", "1", "--out", str(tmp_path), "--quiet"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["defense"]["a_h"] == 0.4
    assert (tmp_path / "model.safetensors").is_file()


def test_cli_bad_input_is_a_clear_message(tmp_path, capsys):
    rc = cli_main(["train", "--data", "digits", "--defense", "midre", "--a-h", "7", "--out", str(tmp_path)])
    assert rc == 2
    assert "a_h" in capsys.readouterr().err


def test_cli_param_reaches_any_defense():
    from argparse import Namespace

    from midre.commands.train import defense_spec_from_args

    args = Namespace(defense="midre+nls", a_h=None, a_l=None, a_e=None, share=None,
                     param=['midre={"a_h": 0.8}', 'nls={"smoothing": -0.1}'])
    spec = TrainConfig(data=DIGITS, defense=defense_spec_from_args(args)).defense
    assert spec["midre"]["a_h"] == 0.8 and spec["nls"]["smoothing"] == -0.1
    with pytest.raises(ValueError, match="--param"):
        defense_spec_from_args(Namespace(defense="nls", a_h=None, a_l=None, a_e=None, share=None, param=["oops"]))


def test_shift_augmentation_translates_each_image_by_whole_pixels_within_an_eighth():
    from midre.train import _shift

    x = torch.rand(64, 3, 32, 32)
    y = _shift(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    found = []
    for i in range(x.shape[0]):
        # the interior of a shifted image is the original's interior moved by (dy, dx), |d| <= 4
        matches = [(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5)
                   if torch.equal(y[i, :, 4:-4, 4:-4], x[i, :, 4 + dy:28 + dy, 4 + dx:28 + dx])]
        assert len(matches) == 1, f"image {i}: not a whole-pixel shift of at most 4 px"
        found.append(matches[0])
    assert len(set(found)) > 10  # offsets are drawn per image
    assert torch.equal(_shift(x, torch.Generator().manual_seed(0)), y)  # seeded
