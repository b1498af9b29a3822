"""The StyleGAN2 generator: shapes, seeded determinism, truncation, modulated convolution by hand,
the safetensors layout and the block-by-block synthesis that IF-GMI uses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from midre.errors import ConfigError
from midre.priors import StyleGAN2, StyleGAN2Config, StyleGAN2Generator, load_stylegan2, save_stylegan2
from midre.priors.stylegan2 import modulated_conv2d

SMALL = {"resolution": 32, "z_dim": 16, "w_dim": 16, "mapping_layers": 2, "channel_base": 128, "channel_max": 16}


@pytest.fixture(scope="module")
def net() -> StyleGAN2:
    return StyleGAN2(StyleGAN2Config(**SMALL), seed=3).eval()


def test_shapes(net):
    cfg = net.config
    assert cfg.num_blocks == 4 and cfg.block_resolutions == [4, 8, 16, 32] and cfg.num_ws == 8
    assert [cfg.channels_at(i) for i in range(4)] == [16, 16, 8, 4]
    z = torch.randn(3, 16)
    w = net.mapping(z)
    assert w.shape == (3, 16)
    assert net.synthesis(w).shape == (3, 3, 32, 32)
    assert net.synthesis(net.broadcast_ws(w)).shape == (3, 3, 32, 32)
    with pytest.raises(ValueError, match="w must be"):
        net.synthesis(torch.zeros(3, 5, 16))


def test_config_is_validated():
    with pytest.raises(ConfigError, match="power of two"):
        StyleGAN2Config(resolution=48)
    with pytest.raises(ConfigError) as err:
        StyleGAN2Config(resolution=16, channels=(8, 8))
    assert err.value.field == "channels"
    with pytest.raises(ConfigError, match="unknown"):
        StyleGAN2Config.from_dict({"resolutoin": 32})


def test_seeded_initialisation_and_synthesis_are_deterministic(net):
    again = StyleGAN2(StyleGAN2Config(**SMALL), seed=3).eval()
    other = StyleGAN2(StyleGAN2Config(**SMALL), seed=4).eval()
    z = torch.randn(2, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b, c = net(z), again(z), other(z)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # with a noise strength, 'random' noise differs between calls, 'const' noise does not
    with torch.no_grad():
        again.blocks[1].conv1.noise_strength.fill_(0.5)
        w = again.mapping(z)
        r1, r2 = (again.synthesis(w, noise_mode="random") for _ in range(2))
        c1, c2 = (again.synthesis(w, noise_mode="const") for _ in range(2))
    assert not torch.allclose(r1, r2) and torch.equal(c1, c2)


def test_truncation_psi_zero_gives_the_average_image(net):
    net = StyleGAN2(StyleGAN2Config(**SMALL), seed=3).eval()
    net.update_w_avg(samples=256, seed=1)
    assert float(net.w_avg.abs().sum()) > 0
    z = torch.randn(4, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        w0 = net.mapping(z, psi=0.0)
        assert torch.allclose(w0, net.w_avg.expand(4, -1))
        images = net.synthesis(w0)
        avg_image = net.synthesis(net.w_avg[None])
        half = net.mapping(z, psi=0.5)
    assert torch.allclose(images, avg_image.expand(4, -1, -1, -1), atol=1e-6)
    assert torch.allclose(half, net.w_avg + 0.5 * (net.mapping(z) - net.w_avg), atol=1e-6)


def _direct_modconv(x, weight, styles, demodulate, up, padding):
    """Straight from Eq. 1-3: a per-sample weight w'_oik = s_i w_oik, then w'' = w' / sqrt(sum w'^2 + eps)."""
    outs = []
    for n in range(x.shape[0]):
        wn = weight * styles[n][None, :, None, None]
        if demodulate:
            wn = wn / torch.sqrt((wn ** 2).sum(dim=(1, 2, 3), keepdim=True) + 1e-8)
        if up:
            outs.append(F.conv_transpose2d(x[n:n + 1], wn.transpose(0, 1), stride=2))
        else:
            outs.append(F.conv2d(x[n:n + 1], wn, padding=padding))
    return torch.cat(outs)


@pytest.mark.parametrize(("demodulate", "up"), [(True, False), (False, False), (True, True)])
def test_modulated_conv_matches_a_direct_computation(demodulate, up):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 5, generator=g)
    weight = torch.randn(4, 3, 3, 3, generator=g)
    styles = torch.rand(2, 3, generator=g) * 2 + 0.1
    got = modulated_conv2d(x, weight, styles, demodulate=demodulate, up=up, padding=1)
    want = _direct_modconv(x, weight, styles, demodulate, up, 1)
    assert got.shape == want.shape == ((2, 4, 11, 11) if up else (2, 4, 5, 5))
    assert torch.allclose(got, want, atol=1e-5)
    if demodulate and not up:
        # a single 1x1 case by hand: w = [[2]], s = 3 -> w' = 6 -> w'' = 6 / 6 = 1: the output is x
        one = modulated_conv2d(torch.tensor([[[[5.0]]]]), torch.tensor([[[[2.0]]]]), torch.tensor([[3.0]]))
        assert one.item() == pytest.approx(5.0, rel=1e-6)


def test_safetensors_round_trip(net, tmp_path):
    path = save_stylegan2(net, tmp_path / "g.safetensors")
    loaded = load_stylegan2(path)
    assert loaded.config == net.config
    z = torch.randn(2, 16)
    with torch.no_grad():
        assert torch.equal(loaded(z), net(z))
    state = net.midre_state_dict()
    assert "synthesis.b4.conv1.weight" in state and "synthesis.b4.conv0.weight" not in state
    assert "synthesis.b32.conv0.noise_const" in state and "mapping.w_avg" in state
    bad = {k: v for k, v in state.items() if k != "mapping.fc0.bias"}
    with pytest.raises(ValueError, match="missing"):
        StyleGAN2(net.config).load_midre_state_dict(bad)
    with pytest.raises(FileNotFoundError):
        load_stylegan2(tmp_path / "none.safetensors")
    with pytest.raises(ConfigError):
        load_stylegan2(None)


def test_block_by_block_synthesis_equals_the_whole(net):
    gen = StyleGAN2Generator(net, (1, 24, 24))
    w = net.mapping(torch.randn(2, 16))
    with torch.no_grad():
        full = gen.synthesize(w)
        for k in (1, 2, 3):
            assert torch.allclose(gen.resume(gen.features(w, k), w, k), full, atol=1e-6)
    assert full.shape == (2, 1, 24, 24) and full.min() >= 0 and full.max() <= 1


def test_converter_round_trip_through_the_rosinality_layout(net, tmp_path, capsys):
    from midre.cli import main
    from midre.priors.stylegan2 import to_rosinality

    net = StyleGAN2(StyleGAN2Config(**SMALL), seed=5).eval()
    with torch.no_grad():
        net.update_w_avg(samples=64)
        for block in net.blocks:  # non-zero noise strengths and biases, so every tensor matters
            block.conv1.noise_strength.fill_(0.3)
            block.torgb.bias.normal_()
    state = to_rosinality(net)
    assert state["convs.0.conv.weight"].shape[0] == 1 and state["noises.noise_0"].shape == (1, 1, 4, 4)
    src = tmp_path / "g.pt"
    torch.save({"g_ema": state, "latent_avg": net.w_avg.clone()}, src)
    dst = tmp_path / "g.safetensors"
    assert main(["convert-stylegan2", str(src), "--out", str(dst)]) == 0
    captured = capsys.readouterr()
    assert "third party" in captured.err and '"w_avg": "checkpoint"' in captured.out
    loaded = load_stylegan2(dst)
    assert loaded.config.channels == (16, 16, 8, 4) and loaded.config.resolution == 32
    z = torch.randn(3, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(z, psi=0.7), net(z, psi=0.7))
    # refused inputs: an NVlabs pickle, a file needing code, not a generator
    (tmp_path / "ffhq.pkl").write_bytes(b"x")
    assert main(["convert-stylegan2", str(tmp_path / "ffhq.pkl"), "--out", str(dst)]) == 2
    assert "NVlabs" in capsys.readouterr().err
    torch.save({"g_ema": {"foo": torch.zeros(1)}}, tmp_path / "bad.pt")
    assert main(["convert-stylegan2", str(tmp_path / "bad.pt"), "--out", str(dst)]) == 2
    assert "rosinality" in capsys.readouterr().err
