"""A StyleGAN2 generator for inference (Karras et al., "Analyzing and Improving the Image Quality of
StyleGAN", CVPR 2020): the attacker's image prior of PPA, IF-GMI and MIRROR.

Written from the paper: a mapping network ``z -> w`` (pixel norm + 8 equalised-lr fully connected
layers with leaky ReLU, learning-rate multiplier 0.01), truncation towards the running average
``w_avg`` (Sec. C.2 of StyleGAN), and a synthesis network of one block per resolution 4, 8, ...,
``resolution``. Every block has modulated / demodulated 3x3 convolutions (Sec. 2.2, Eq. 1-3),
per-pixel noise inputs scaled by a learned strength, and a ``toRGB`` output whose images are
up-sampled and summed (the "skip" architecture, Fig. 7). Up-sampling follows the common public
implementations: a stride-2 transposed convolution followed by a [1, 3, 3, 1] blur for the
convolutions, zero insertion + the same blur for the RGB skip.

Nothing is trained here and no weights ship: :func:`load_stylegan2` reads a safetensors state dict
in the key layout of :data:`KEY_LAYOUT` (docs/attacks.md) whose metadata carries the
:class:`StyleGAN2Config`; without weights the network is randomly initialised (for tests).
``midre convert-stylegan2`` turns a public checkpoint into that layout offline.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from midre.errors import ConfigError

__all__ = [
    "CONFIG_METADATA_KEY",
    "KEY_LAYOUT",
    "ModulatedConv2d",
    "StyleGAN2",
    "StyleGAN2Config",
    "load_stylegan2",
    "config_from_rosinality",
    "from_rosinality",
    "modulated_conv2d",
    "save_stylegan2",
    "to_rosinality",
]

#: safetensors metadata entry that holds the JSON of the :class:`StyleGAN2Config`.
CONFIG_METADATA_KEY = "midre.stylegan2.config"

#: The state-dict keys (``{i}``: mapping layer 0..n-1; ``{r}``: block resolution 4, 8, ...; conv0 is
#: absent at 4 px). Raw weights are stored; the equalised learning-rate scales are applied at run time.
KEY_LAYOUT = {
    "mapping.fc{i}.weight": "[w_dim, z_dim or w_dim] raw weight (effective = raw * lr_mul / sqrt(fan_in))",
    "mapping.fc{i}.bias": "[w_dim] raw bias (effective = raw * lr_mul)",
    "mapping.w_avg": "[w_dim] average w, the truncation centre",
    "synthesis.const": "[C_4, 4, 4] learned constant input",
    "synthesis.b{r}.conv{0,1}.weight": "[C_out, C_in, 3, 3] raw weight (effective = raw / sqrt(C_in * 9))",
    "synthesis.b{r}.conv{0,1}.affine.weight": "[C_in, w_dim] style affine (effective = raw / sqrt(w_dim))",
    "synthesis.b{r}.conv{0,1}.affine.bias": "[C_in] style affine bias (initialised to 1)",
    "synthesis.b{r}.conv{0,1}.bias": "[C_out] bias added before the leaky ReLU",
    "synthesis.b{r}.conv{0,1}.noise_strength": "[] scale of the per-pixel noise",
    "synthesis.b{r}.conv{0,1}.noise_const": "[r, r] the fixed noise used with noise_mode='const'",
    "synthesis.b{r}.torgb.weight": "[C_img, C_out, 1, 1] raw weight (modulated, not demodulated)",
    "synthesis.b{r}.torgb.affine.weight": "[C_out, w_dim]",
    "synthesis.b{r}.torgb.affine.bias": "[C_out]",
    "synthesis.b{r}.torgb.bias": "[C_img]",
}

_SQRT2 = math.sqrt(2.0)
_NOISE_MODES = ("const", "random", "none")


@dataclass(frozen=True)
class StyleGAN2Config:
    """Architecture of a :class:`StyleGAN2`.

    Attributes:
        resolution: output side (a power of two >= 4; FFHQ: 1024, the paper's attacks also use 256).
        z_dim: latent size (512).
        w_dim: intermediate latent size (512).
        mapping_layers: fully connected layers of the mapping network (8).
        mapping_lr_mul: equalised learning-rate multiplier of the mapping network (0.01).
        channel_base: channels at resolution r are ``min(channel_base // r, channel_max)`` (16384 -> 512
            channels up to 32 px, 256 at 64 px, 64 at 256 px), unless ``channels`` is given.
        channel_max: upper bound of the channel count (512).
        channels: explicit channels per resolution, 4 px first (overrides base/max; a converter sets it).
        img_channels: output image channels (3).
    """

    resolution: int = 256
    z_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 8
    mapping_lr_mul: float = 0.01
    channel_base: int = 16384
    channel_max: int = 512
    channels: tuple[int, ...] | None = None
    img_channels: int = 3

    def __post_init__(self) -> None:
        r = self.resolution
        if isinstance(r, bool) or not isinstance(r, int) or r < 4 or r & (r - 1):
            raise ConfigError("resolution", f"must be a power of two >= 4, got {r!r}")
        for name in ("z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max", "img_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(name, f"must be a positive integer, got {value!r}")
        if not (isinstance(self.mapping_lr_mul, int | float) and self.mapping_lr_mul > 0):
            raise ConfigError("mapping_lr_mul", f"must be a positive number, got {self.mapping_lr_mul!r}")
        if self.channels is not None:
            chans = tuple(self.channels)
            if len(chans) != self.num_blocks or any(isinstance(c, bool) or not isinstance(c, int) or c < 1
                                                    for c in chans):
                raise ConfigError("channels", f"must list {self.num_blocks} positive integers (4 px first), "
                                              f"got {self.channels!r}")
            object.__setattr__(self, "channels", chans)

    @property
    def num_blocks(self) -> int:
        """Synthesis blocks: one per resolution 4, 8, ..., ``resolution``."""
        return int(math.log2(self.resolution)) - 1

    @property
    def block_resolutions(self) -> list[int]:
        return [2 ** (i + 2) for i in range(self.num_blocks)]

    @property
    def num_ws(self) -> int:
        """How many w vectors the synthesis reads (one per modulated layer + the last toRGB)."""
        return 2 * self.num_blocks

    def channels_at(self, index: int) -> int:
        """Channels of block ``index`` (0: 4 px)."""
        if self.channels is not None:
            return self.channels[index]
        return min(self.channel_base // self.block_resolutions[index], self.channel_max)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["channels"] = list(self.channels) if self.channels is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StyleGAN2Config:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(unknown[0], f"unknown StyleGAN2Config field; known: {', '.join(sorted(known))}")
        data = dict(data)
        if data.get("channels") is not None:
            data["channels"] = tuple(data["channels"])
        return cls(**data)


def modulated_conv2d(x: Tensor, weight: Tensor, styles: Tensor, *, demodulate: bool = True, up: bool = False,
                     padding: int = 0) -> Tensor:
    """Modulated (and demodulated) convolution (Eq. 1-3) with one weight shared by the batch.

    ``conv(x, w * s)`` equals ``conv(x * s, w)`` (the style scales input channels), and demodulation
    scales each output channel by ``1 / sqrt(sum_{i,k} (w_oik s_i)^2 + 1e-8)``; computing it that way
    avoids a per-sample weight (a grouped convolution), which is several times faster on CPUs.

    Args:
        x: input ``[N, C_in, H, W]``.
        weight: effective weight ``[C_out, C_in, k, k]`` (equalised-lr scale already applied).
        styles: per-sample input-channel scales ``[N, C_in]``.
        demodulate: divide each output channel by ``sqrt(sum w'^2 + 1e-8)`` (Eq. 3).
        up: 2x up-sampling by a stride-2 transposed convolution (blur it afterwards).
        padding: convolution padding (ignored when ``up``).

    Returns:
        ``[N, C_out, H', W']``.
    """
    x = x * styles[:, :, None, None].to(x.dtype)
    if up:
        out = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
    else:
        out = F.conv2d(x, weight, padding=padding)
    if demodulate:
        sq = weight.pow(2).sum(dim=(2, 3))  # [C_out, C_in]
        dcoef = torch.rsqrt(styles.pow(2) @ sq.T + 1e-8)  # [N, C_out]
        out = out * dcoef[:, :, None, None].to(out.dtype)
    return out


def _blur_kernel() -> Tensor:
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    k = k[:, None] * k[None, :]
    return k / k.sum()


def _blur(x: Tensor, kernel: Tensor, pad: tuple[int, int], gain: float) -> Tensor:
    """Depthwise FIR filter with asymmetric padding ``(before, after)`` on both spatial axes."""
    c = x.shape[1]
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    kk = (kernel * gain).flip(0, 1)[None, None].expand(c, 1, *kernel.shape).to(x.dtype)
    return F.conv2d(x, kk, groups=c)


def _upsample_skip(img: Tensor, kernel: Tensor) -> Tensor:
    """2x up-sampling of the RGB skip: zero insertion, then the blur with gain 4 (pad 2, 1)."""
    n, c, h, w = img.shape
    z = img.new_zeros(n, c, h, 2, w, 2)
    z[:, :, :, 0, :, 0] = img
    return _blur(z.reshape(n, c, 2 * h, 2 * w), kernel, (2, 1), 4.0)


class _Affine(nn.Module):
    """Equalised-lr affine map ``w -> style`` (bias initialised to 1)."""

    def __init__(self, w_dim: int, out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out, w_dim))
        self.bias = nn.Parameter(torch.ones(out))
        self.scale = 1.0 / math.sqrt(w_dim)

    def forward(self, w: Tensor) -> Tensor:
        return F.linear(w, self.weight * self.scale, self.bias)


class ModulatedConv2d(nn.Module):
    """A styled 3x3 convolution + noise + bias + leaky ReLU (``up``: 2x up-sampling first)."""

    def __init__(self, c_in: int, c_out: int, w_dim: int, resolution: int, up: bool = False) -> None:
        super().__init__()
        self.up = up
        self.weight = nn.Parameter(torch.randn(c_out, c_in, 3, 3))
        self.affine = _Affine(w_dim, c_in)
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.scale = 1.0 / math.sqrt(c_in * 9)
        self.register_buffer("blur", _blur_kernel(), persistent=False)

    def forward(self, x: Tensor, w: Tensor, noise_mode: str = "const",
                generator: torch.Generator | None = None) -> Tensor:
        styles = self.affine(w)
        x = modulated_conv2d(x, self.weight * self.scale, styles, demodulate=True, up=self.up, padding=1)
        if self.up:
            x = _blur(x, self.blur, (1, 1), 4.0)
        if noise_mode == "const":
            x = x + self.noise_strength * self.noise_const
        elif noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, x.shape[2], x.shape[3], generator=generator).to(x)
            x = x + self.noise_strength * noise
        return F.leaky_relu(x + self.bias[None, :, None, None], 0.2) * _SQRT2


class _ToRGB(nn.Module):
    """Modulated 1x1 convolution to image channels (no demodulation, no activation)."""

    def __init__(self, c_in: int, img_channels: int, w_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(img_channels, c_in, 1, 1))
        self.affine = _Affine(w_dim, c_in)
        self.bias = nn.Parameter(torch.zeros(img_channels))
        self.scale = 1.0 / math.sqrt(c_in)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        out = modulated_conv2d(x, self.weight * self.scale, self.affine(w), demodulate=False)
        return out + self.bias[None, :, None, None]


class _Block(nn.Module):
    """One synthesis resolution: (up-sampling conv0,) conv1, toRGB."""

    def __init__(self, c_in: int, c_out: int, cfg: StyleGAN2Config, resolution: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.conv0 = ModulatedConv2d(c_in, c_out, cfg.w_dim, resolution, up=True) if resolution > 4 else None
        self.conv1 = ModulatedConv2d(c_out, c_out, cfg.w_dim, resolution)
        self.torgb = _ToRGB(c_out, cfg.img_channels, cfg.w_dim)
        self.register_buffer("blur", _blur_kernel(), persistent=False)


class _Mapping(nn.Module):
    """``z -> w``: pixel norm, then ``mapping_layers`` equalised-lr FC layers with leaky ReLU."""

    def __init__(self, cfg: StyleGAN2Config) -> None:
        super().__init__()
        self.lr_mul = cfg.mapping_lr_mul
        dims = [cfg.z_dim] + [cfg.w_dim] * cfg.mapping_layers
        for i in range(cfg.mapping_layers):
            fc = nn.Module()
            fc.weight = nn.Parameter(torch.randn(dims[i + 1], dims[i]) / self.lr_mul)
            fc.bias = nn.Parameter(torch.zeros(dims[i + 1]))
            self.add_module(f"fc{i}", fc)
        self.num_layers = cfg.mapping_layers
        self.register_buffer("w_avg", torch.zeros(cfg.w_dim))

    def forward(self, z: Tensor) -> Tensor:
        x = z * torch.rsqrt(z.pow(2).mean(1, keepdim=True) + 1e-8)
        for i in range(self.num_layers):
            fc = getattr(self, f"fc{i}")
            scale = self.lr_mul / math.sqrt(fc.weight.shape[1])
            x = F.leaky_relu(F.linear(x, fc.weight * scale, fc.bias * self.lr_mul), 0.2) * _SQRT2
        return x


class StyleGAN2(nn.Module):
    """StyleGAN2 generator ``z -> w -> image`` (inference only; images in about ``[-1, 1]``).

    The synthesis runs block by block so that IF-GMI can optimise the features between blocks:
    :meth:`run_blocks` maps a state ``(x, img)`` (features and the RGB skip so far) through blocks
    ``[start, stop)``; ``state=None`` starts from the learned constant.

    Example:
        >>> g = StyleGAN2(StyleGAN2Config(resolution=32, z_dim=64, w_dim=64, channel_base=512, channel_max=32))
        >>> w = g.mapping(torch.randn(2, 64), psi=0.7)       # [2, 64]
        >>> g.synthesis(w).shape
        torch.Size([2, 3, 32, 32])
    """

    def __init__(self, config: StyleGAN2Config | None = None, seed: int | None = 0) -> None:
        super().__init__()
        self.config = config or StyleGAN2Config()
        if seed is None:
            self._build(self.config)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self._build(self.config)

    def _build(self, cfg: StyleGAN2Config) -> None:
        self.mapping_net = _Mapping(cfg)
        self.const = nn.Parameter(torch.randn(cfg.channels_at(0), 4, 4))
        self.blocks = nn.ModuleList(_Block(cfg.channels_at(max(i - 1, 0)), cfg.channels_at(i), cfg, res)
                                    for i, res in enumerate(cfg.block_resolutions))

    # ------------------------------------------------------------------ state dict in the documented layout

    def midre_state_dict(self) -> dict[str, Tensor]:
        """The weights under the keys of :data:`KEY_LAYOUT`."""
        out: dict[str, Tensor] = {}
        m = self.mapping_net
        for i in range(m.num_layers):
            fc = getattr(m, f"fc{i}")
            out[f"mapping.fc{i}.weight"] = fc.weight.detach()
            out[f"mapping.fc{i}.bias"] = fc.bias.detach()
        out["mapping.w_avg"] = m.w_avg.detach()
        out["synthesis.const"] = self.const.detach()
        for block in self.blocks:
            prefix = f"synthesis.b{block.resolution}."
            for name, tensor in block.state_dict().items():
                out[prefix + name] = tensor.detach()
        return {k: v.contiguous().clone() for k, v in out.items()}

    def load_midre_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load weights in the :data:`KEY_LAYOUT` keys; a missing, extra or mis-shaped key raises ``ValueError``."""
        own = self.midre_state_dict()
        missing = sorted(set(own) - set(state))
        extra = sorted(set(state) - set(own))
        if missing or extra:
            raise ValueError(f"StyleGAN2 state dict does not match the configuration: missing {missing[:5]}, "
                             f"unexpected {extra[:5]}")
        bad = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
        if bad:
            k = bad[0]
            raise ValueError(f"StyleGAN2 state dict: {k} has shape {tuple(state[k].shape)}, "
                             f"expected {tuple(own[k].shape)}")
        with torch.no_grad():
            m = self.mapping_net
            for i in range(m.num_layers):
                fc = getattr(m, f"fc{i}")
                fc.weight.copy_(state[f"mapping.fc{i}.weight"])
                fc.bias.copy_(state[f"mapping.fc{i}.bias"])
            m.w_avg.copy_(state["mapping.w_avg"])
            self.const.copy_(state["synthesis.const"])
            for block in self.blocks:
                prefix = f"synthesis.b{block.resolution}."
                block.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})

    # ------------------------------------------------------------------ mapping and truncation

    @property
    def w_avg(self) -> Tensor:
        return self.mapping_net.w_avg

    def mapping(self, z: Tensor, psi: float = 1.0) -> Tensor:
        """``z [N, z_dim] -> w [N, w_dim]`` with truncation ``w_avg + psi * (w - w_avg)``."""
        w = self.mapping_net(z)
        if psi != 1.0:
            w = self.w_avg + psi * (w - self.w_avg)
        return w

    @torch.no_grad()
    def update_w_avg(self, samples: int = 10000, seed: int = 0, batch: int = 1000) -> Tensor:
        """Set ``w_avg`` to the mean of ``samples`` mapped Gaussian latents (for weights that lack it)."""
        gen = torch.Generator().manual_seed(seed)
        device = self.const.device
        total = torch.zeros(self.config.w_dim, device=device)
        done = 0
        while done < samples:
            n = min(batch, samples - done)
            z = torch.randn(n, self.config.z_dim, generator=gen).to(device)
            total += self.mapping_net(z).sum(0)
            done += n
        self.mapping_net.w_avg.copy_(total / samples)
        return self.mapping_net.w_avg

    # ------------------------------------------------------------------ synthesis

    def broadcast_ws(self, w: Tensor) -> Tensor:
        """``[N, w_dim]`` -> ``[N, num_ws, w_dim]`` (a given ``[N, num_ws, w_dim]`` passes through)."""
        if w.dim() == 2:
            return w[:, None, :].expand(-1, self.config.num_ws, -1)
        if w.dim() != 3 or w.shape[1] != self.config.num_ws:
            raise ValueError(f"w must be [N, {self.config.w_dim}] or [N, {self.config.num_ws}, "
                             f"{self.config.w_dim}], got {tuple(w.shape)}")
        return w

    def run_blocks(self, state: tuple[Tensor, Tensor | None] | None, w: Tensor, start: int, stop: int,
                   noise_mode: str = "const", generator: torch.Generator | None = None
                   ) -> tuple[Tensor, Tensor | None]:
        """Run synthesis blocks ``[start, stop)`` on ``state = (x, img)`` (``None``: the constant input).

        Block ``b`` reads ``ws[:, 2b - 1]`` (conv0), ``ws[:, 2b]`` (conv1) and ``ws[:, 2b + 1]`` (toRGB).
        """
        if noise_mode not in _NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {_NOISE_MODES}, got {noise_mode!r}")
        ws = self.broadcast_ws(w)
        if state is None:
            if start != 0:
                raise ValueError("state=None starts at block 0")
            x, img = self.const[None].expand(ws.shape[0], -1, -1, -1), None
        else:
            x, img = state
        for b in range(start, stop):
            block = self.blocks[b]
            if block.conv0 is not None:
                x = block.conv0(x, ws[:, 2 * b - 1], noise_mode, generator)
            x = block.conv1(x, ws[:, 2 * b], noise_mode, generator)
            rgb = block.torgb(x, ws[:, 2 * b + 1])
            img = rgb if img is None else _upsample_skip(img, block.blur) + rgb
        return x, img

    def synthesis(self, w: Tensor, noise_mode: str = "const", generator: torch.Generator | None = None) -> Tensor:
        """``w -> image [N, img_channels, resolution, resolution]`` (about ``[-1, 1]``)."""
        _, img = self.run_blocks(None, w, 0, self.config.num_blocks, noise_mode, generator)
        assert img is not None
        return img

    def forward(self, z: Tensor, psi: float = 1.0, noise_mode: str = "const") -> Tensor:
        return self.synthesis(self.mapping(z, psi), noise_mode)


def save_stylegan2(net: StyleGAN2, path: str | Path, extra_metadata: dict[str, str] | None = None) -> Path:
    """Write ``net`` as a safetensors file in the :data:`KEY_LAYOUT` with its config in the metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {CONFIG_METADATA_KEY: json.dumps(net.config.to_dict()), **(extra_metadata or {})}
    save_file({k: v.cpu() for k, v in net.midre_state_dict().items()}, str(path), metadata=meta)
    return path


def load_stylegan2(path: str | Path | None = None, config: StyleGAN2Config | dict[str, Any] | None = None,
                   *, seed: int = 0, device: str | torch.device = "cpu") -> StyleGAN2:
    """A :class:`StyleGAN2` with the weights of ``path`` (safetensors only), or randomly initialised.

    Args:
        path: a safetensors file in the :data:`KEY_LAYOUT`; ``None``: random initialisation from ``seed``.
        config: the architecture; read from the file's metadata when ``None`` (required without a path).
        seed: the random initialisation's seed (and of the noise buffers when they are absent).
        device: where to put the network.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ConfigError: no configuration can be found, or it is invalid.
        ValueError: the file's tensors do not match the configuration.
    """
    if isinstance(config, dict):
        config = StyleGAN2Config.from_dict(config)
    if path is None:
        if config is None:
            raise ConfigError("stylegan2", "a random StyleGAN2 needs its configuration")
        return StyleGAN2(config, seed=seed).to(device).eval()
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no StyleGAN2 weights at {path}")
    if config is None:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
        if CONFIG_METADATA_KEY not in meta:
            raise ConfigError("stylegan2", f"{path} has no '{CONFIG_METADATA_KEY}' metadata: pass its config")
        config = StyleGAN2Config.from_dict(json.loads(meta[CONFIG_METADATA_KEY]))
    net = StyleGAN2(config, seed=seed)
    net.load_midre_state_dict(load_file(str(path)))
    return net.to(device).eval()



# --------------------------------------------------------------------------- rosinality's stylegan2-pytorch layout


def _rosinality_pairs(config: StyleGAN2Config) -> list[tuple[str, str]]:
    """``(our key, rosinality key)`` for every tensor; shapes differ only by leading singleton axes."""
    pairs: list[tuple[str, str]] = []
    for i in range(config.mapping_layers):
        pairs += [(f"mapping.fc{i}.weight", f"style.{i + 1}.weight"), (f"mapping.fc{i}.bias", f"style.{i + 1}.bias")]
    pairs.append(("synthesis.const", "input.input"))

    def conv(ours: str, theirs: str, noise: int) -> None:
        pairs.extend([(f"{ours}.weight", f"{theirs}.conv.weight"),
                      (f"{ours}.affine.weight", f"{theirs}.conv.modulation.weight"),
                      (f"{ours}.affine.bias", f"{theirs}.conv.modulation.bias"),
                      (f"{ours}.bias", f"{theirs}.activate.bias"),
                      (f"{ours}.noise_strength", f"{theirs}.noise.weight"),
                      (f"{ours}.noise_const", f"noises.noise_{noise}")])

    def torgb(ours: str, theirs: str) -> None:
        pairs.extend([(f"{ours}.weight", f"{theirs}.conv.weight"),
                      (f"{ours}.affine.weight", f"{theirs}.conv.modulation.weight"),
                      (f"{ours}.affine.bias", f"{theirs}.conv.modulation.bias"),
                      (f"{ours}.bias", f"{theirs}.bias")])

    conv("synthesis.b4.conv1", "conv1", 0)
    torgb("synthesis.b4.torgb", "to_rgb1")
    for j, res in enumerate(config.block_resolutions[1:]):
        conv(f"synthesis.b{res}.conv0", f"convs.{2 * j}", 2 * j + 1)
        conv(f"synthesis.b{res}.conv1", f"convs.{2 * j + 1}", 2 * j + 2)
        torgb(f"synthesis.b{res}.torgb", f"to_rgbs.{j}")
    return pairs


def config_from_rosinality(state: dict[str, Tensor], mapping_lr_mul: float = 0.01) -> StyleGAN2Config:
    """The :class:`StyleGAN2Config` of a rosinality ``g_ema`` state dict (read from its tensor shapes)."""
    try:
        n_mlp = sum(1 for k in state if k.startswith("style.") and k.endswith(".weight"))
        w_dim = int(state["style.1.weight"].shape[0])
        n_rgbs = sum(1 for k in state if k.startswith("to_rgbs.") and k.endswith(".conv.weight"))
        channels = [int(state["input.input"].shape[1])]
        channels += [int(state[f"to_rgbs.{j}.conv.weight"].shape[2]) for j in range(n_rgbs)]
        img_channels = int(state["to_rgb1.conv.weight"].shape[1])
    except KeyError as exc:
        raise ValueError(f"not a rosinality stylegan2-pytorch generator state dict: no {exc.args[0]!r}") from None
    return StyleGAN2Config(resolution=2 ** (n_rgbs + 2), z_dim=w_dim, w_dim=w_dim, mapping_layers=n_mlp,
                           mapping_lr_mul=mapping_lr_mul, channels=tuple(channels), img_channels=img_channels)


def from_rosinality(state: dict[str, Tensor], latent_avg: Tensor | None = None,
                    mapping_lr_mul: float = 0.01) -> StyleGAN2:
    """A :class:`StyleGAN2` with the weights of a rosinality ``g_ema`` state dict.

    ``latent_avg`` (the checkpoint's ``latent_avg`` entry) becomes ``w_avg``; without it ``w_avg`` is the
    mean of 10,000 mapped latents (seed 0).
    """
    config = config_from_rosinality(state, mapping_lr_mul)
    net = StyleGAN2(config, seed=0)
    own = net.midre_state_dict()
    ours: dict[str, Tensor] = {}
    for our_key, their_key in _rosinality_pairs(config):
        if their_key not in state:
            raise ValueError(f"rosinality state dict lacks {their_key!r}")
        ours[our_key] = state[their_key].detach().float().reshape(own[our_key].shape)
    ours["mapping.w_avg"] = own["mapping.w_avg"] if latent_avg is None else latent_avg.float().reshape(-1)
    net.load_midre_state_dict(ours)
    if latent_avg is None:
        net.update_w_avg()
    return net.eval()


def to_rosinality(net: StyleGAN2) -> dict[str, Tensor]:
    """``net``'s weights in rosinality's ``g_ema`` layout (for exchanges and the converter's tests)."""
    state = net.midre_state_dict()
    out: dict[str, Tensor] = {}
    for our_key, their_key in _rosinality_pairs(net.config):
        t = state[our_key]
        if their_key.endswith("conv.weight"):
            t = t[None]
        elif their_key == "input.input" or their_key.startswith("noises."):
            t = t[None] if their_key == "input.input" else t[None, None]
        elif their_key.endswith(".noise.weight"):
            t = t.reshape(1)
        elif their_key.startswith("to_rgb") and their_key.endswith(".bias") and ".conv." not in their_key:
            t = t.reshape(1, -1, 1, 1)
        out[their_key] = t.clone()
    return out
