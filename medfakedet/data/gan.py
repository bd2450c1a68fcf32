"""A small GAN trained on one organ's reals: fakes at the output size with the reals' detail.

``gan``: an adversarially trained autoencoder (as in VQGAN-style image models, without the
quantiser). An encoder maps an image to a latent map (1/4 of its side), a generator (nearest
upsampling + 3x3 convs) decodes it; both learn to reconstruct the reals (cross-entropy) and to
fool a spectral-norm patch discriminator (hinge loss) with their reconstructions and with
decodes of *new* latents, mixed between two reals' codes plus noise. Each organ has only a few
hundred reals, so the discriminator sees reals and fakes through the same differentiable
augmentations (DiffAugment: brightness, contrast, translation, cutout). A sample decodes a new
mix of two reals' codes: its layout follows the first ("source") real, not a copy of it.

On the CPU the model works at 64 px within a step cap (:data:`CPU_STEPS`, quick for phantom
builds and tests; the real-scan recipe trains 1500 steps, ``builder.REAL_GAN_CPU_STEPS``; a
build's time budget can stop it earlier); on a CUDA device at the output size with many more steps
(:data:`GPU_STEPS`). Decoded samples are then given a reference real's intensity and spectrum
(:class:`DetailMatch`): histogram-matched to their source real, a phase-preserving gain per
radial frequency brings their power spectrum to the real's (edges get as sharp as the real's),
the fine-detail power still missing is added as random-phase texture that follows edges and
brightness as the reals' detail does, and a last histogram match restores the real's intensity
distribution. So neither blur nor noise level gives the fakes away
(:mod:`.separability` measures it), and the fake reports the source real so that a builder
keeps both in one split.

Determinism: as for the other approaches (see :mod:`.fakes`): on the CPU, with the step cap
ending training, the fakes are a function of the seeds. CUDA training is not bit-reproducible.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

from medfakedet.runtime import select_device

from .phantoms.canvas import display_uint8
from .synth_base import (
    FittedBase,
    build_seeded,
    match_histogram,
    resize,
    stack_reals,
    torch_seed,
)

#: Training steps (one discriminator + one generator update each) on the CPU and on CUDA.
CPU_STEPS = 160
GPU_STEPS = 6000
#: Generator resolution on the CPU (on CUDA: the output size, up to 256).
CPU_GEN_SIZE = 64
LATENT = 16


def diff_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """DiffAugment (Zhao et al. 2020): brightness, contrast, translation by up to 1/8, cutout."""
    n, _, h, w = x.shape
    dev = x.device

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen).to(dev)

    x = x + (rand(n, 1, 1, 1) - 0.5) * 0.3
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (rand(n, 1, 1, 1) * 0.6 + 0.7) + mean
    shift_y = ((rand(n) - 0.5) * h / 4).round().long()
    shift_x = ((rand(n) - 0.5) * w / 4).round().long()
    gy = (torch.arange(h, device=dev)[None, :] - shift_y[:, None]).clamp(0, h - 1)
    gx = (torch.arange(w, device=dev)[None, :] - shift_x[:, None]).clamp(0, w - 1)
    x = x[torch.arange(n, device=dev)[:, None, None], :, gy[:, :, None], gx[:, None, :]]
    x = x.permute(0, 3, 1, 2)
    cy = (rand(n) * h).long()
    cx = (rand(n) * w).long()
    ys = torch.arange(h, device=dev)[None, :, None]
    xs = torch.arange(w, device=dev)[None, None, :]
    hole = ((ys - cy[:, None, None]).abs() < h // 8) & ((xs - cx[:, None, None]).abs() < w // 8)
    return x * (~hole[:, None]).float()


class Encoder(nn.Module):
    """Image -> latent map at 1 / 2**depth of its side (strided 4x4 convs, a 1x1 to ``latent``)."""

    def __init__(self, latent: int = LATENT, depth: int = 3):
        super().__init__()
        chans = (1, 16, 32, 64)[: depth + 1]
        layers: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:], strict=True):
            layers += [nn.Conv2d(a, b, 4, 2, 1), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers, nn.Conv2d(chans[-1], latent, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Generator(nn.Module):
    """Latent map -> ``depth`` doubling blocks (nearest up, 3x3 conv, LeakyReLU) -> image in
    [0, 1]."""

    def __init__(self, latent: int = LATENT, depth: int = 3):
        super().__init__()
        chans = (64, 32, 16, 8)[-(depth + 1) :]
        blocks: list[nn.Module] = [nn.Conv2d(latent, chans[0], 3, padding=1), nn.LeakyReLU(0.2)]
        for a, b in zip(chans[:-1], chans[1:], strict=True):
            blocks += [nn.Upsample(scale_factor=2), nn.Conv2d(a, b, 3, padding=1)]
            blocks.append(nn.LeakyReLU(0.2))
        self.body = nn.Sequential(*blocks, nn.Conv2d(chans[-1], 1, 3, padding=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.body(z))


class Discriminator(nn.Module):
    """Patch discriminator: strided 4x4 convs with spectral norm to ``size / 8``, a score map."""

    def __init__(self):
        super().__init__()
        chans = (1, 16, 32, 64)
        layers: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:], strict=True):
            layers += [spectral_norm(nn.Conv2d(a, b, 4, 2, 1)), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers, spectral_norm(nn.Conv2d(chans[-1], 1, 3, padding=1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _radial_index(shape: tuple[int, int]) -> tuple[np.ndarray, int]:
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    r = np.sqrt(fy**2 + fx**2) * 2 * max(shape)  # 0 .. ~max(shape)*sqrt(2)
    idx = np.minimum(r.astype(int), max(shape))
    return idx, max(shape) + 1


def radial_power(images: np.ndarray, each: bool = False) -> np.ndarray:
    """Power per integer radial frequency of (N, H, W) float images (mean removed): averaged
    over the images, or (N, bins) per image with ``each``."""
    idx, nbins = _radial_index(images.shape[-2:])
    spec = np.abs(np.fft.rfft2(images - images.mean(axis=(-2, -1), keepdims=True))) ** 2
    counts = np.maximum(np.bincount(idx.ravel(), minlength=nbins), 1)
    per_image = spec.reshape(len(spec), -1) if each else spec.mean(axis=0).reshape(1, -1)
    total = np.stack([np.bincount(idx.ravel(), weights=p, minlength=nbins) for p in per_image])
    return total / counts if each else total[0] / counts


def _highpass(images: np.ndarray) -> np.ndarray:
    """Image minus its 3x3 box blur (edge-replicated), for (N, H, W) floats."""
    p = np.pad(images, ((0, 0), (1, 1), (1, 1)), mode="edge")
    h, w = images.shape[-2:]
    blur = sum(p[:, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)) / 9.0
    return images - blur


class DetailMatch:
    """Gives a fake the spectrum of a reference real (see the module docstring).

    Per radial frequency, a phase-preserving gain (within ``1 / max_gain .. max_gain``) brings
    the fake's power towards the real's, which sharpens edges the way the real's are sharp; above
    ``detail_from`` (a radial index; ``max(shape)`` is the Nyquist frequency) the power still
    missing is added as random-phase texture, spread over the image by brightness as the reals'
    fine detail is.
    """

    BINS = 16

    def __init__(
        self,
        reals: np.ndarray,
        fakes: np.ndarray,
        detail_from: float,
        max_gain: float = 8.0,
        edge_power: float = 1.0,
    ):
        """``reals``, ``fakes``: (N, H, W) floats in [0, 1] at the output shape."""
        self.shape = reals.shape[-2:]
        self.idx, _ = _radial_index(self.shape)
        self.real_power = radial_power(reals, each=True)
        self.detail_from, self.max_gain, self.edge_power = int(detail_from), max_gain, edge_power
        # High-frequency detail per brightness bin: reals' |high-pass| vs the fakes'.
        self.level = self._detail_by_level(reals)
        self.scale = np.sqrt(np.maximum(self.level**2 - self._detail_by_level(fakes) ** 2, 0.0))

    def _detail_by_level(self, images: np.ndarray) -> np.ndarray:
        hp = np.abs(_highpass(images))
        bins = self._bins(images)
        s = np.bincount(bins.ravel(), weights=hp.ravel(), minlength=self.BINS)
        c = np.bincount(bins.ravel(), minlength=self.BINS)
        return s / np.maximum(c, 1)

    def _bins(self, images: np.ndarray) -> np.ndarray:
        return np.minimum((np.clip(images, 0, 1) * self.BINS).astype(int), self.BINS - 1)

    def apply(self, fake: np.ndarray, ref: int, rng: np.random.Generator) -> np.ndarray:
        """``fake`` (H, W) float in [0, 1] given the spectrum of real number ``ref``."""
        target = self.real_power[ref]
        mean = fake.mean()
        spec = np.fft.rfft2(fake - mean)
        own = radial_power(fake[None])
        gain = np.clip(np.sqrt(target / np.maximum(own, 1e-12)), 1 / self.max_gain, self.max_gain)
        gain[:2] = 1.0  # leave the coarsest structure alone
        missing = np.maximum(target - gain**2 * own, 0.0)
        missing[: self.detail_from] = 0.0
        shaped = np.fft.irfft2(spec * gain[self.idx], s=self.shape)
        phase = np.exp(2j * np.pi * rng.random(self.idx.shape))
        texture = np.fft.irfft2(np.sqrt(missing)[self.idx] * phase, s=self.shape)
        # Spread the texture as the reals' fine detail is: by brightness, and along edges
        # rather than evenly; keep its total power.
        gy, gx = np.gradient(shaped)
        level = self.scale[self._bins(fake)] * np.hypot(gy, gx) ** self.edge_power
        level = level / max(float(np.sqrt((level**2).mean())), 1e-9)
        return mean + shaped + texture * level


class GANSynthesizer(FittedBase):
    """Adversarially trained autoencoder-GAN with DiffAugment; see the module docstring."""

    name = "gan"

    def __init__(
        self,
        max_steps: int | None = None,
        device: str = "cpu",
        gen_size: int | None = None,
        batch: int | None = None,
        lr: float = 2e-3,
        adv_weight: float = 0.05,
        depth: int = 2,
    ):
        super().__init__()
        self.device = select_device(device)
        cuda = self.device.type == "cuda"
        self.max_steps = max_steps if max_steps is not None else GPU_STEPS if cuda else CPU_STEPS
        self.batch = batch if batch is not None else 32 if cuda else 8
        self.gen_size, self.lr, self.adv_weight = gen_size, lr, adv_weight
        self.depth = depth  # the latent map is 1 / 2**depth of the working side
        self.generator: Generator | None = None
        self.detail: DetailMatch | None = None
        self._codes: torch.Tensor | None = None
        self.seconds = 0.0

    def _size(self) -> tuple[int, int]:
        """Working shape: ``gen_size`` or 64 px on the CPU, else the output shape (up to 256),
        rounded up to a multiple of 8 (the patch discriminator halves it three times)."""
        if self.gen_size is not None:
            side = (self.gen_size, self.gen_size)
        elif self.device.type != "cuda":
            side = (CPU_GEN_SIZE, CPU_GEN_SIZE)
        else:
            side = tuple(min(256, s) for s in self._shape)
        return (8 * -(-side[0] // 8), 8 * -(-side[1] // 8))

    def _mix(self, codes: torch.Tensor, other: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """New latents between two reals' codes, plus noise on the scale of the codes."""
        n = codes.shape[0]
        t = (torch.rand(n, 1, 1, 1, generator=gen) * 0.3 + 0.15).to(codes.device)
        noise = torch.randn(codes.shape, generator=gen).to(codes.device)
        return codes + t * (other - codes) + 0.15 * codes.std() * noise

    def fit(self, reals: list[np.ndarray], rng: np.random.Generator, time_budget_s: float) -> None:
        start = time.perf_counter()
        self._reals, self._shape = stack_reals(reals)
        size = self._size()
        seed = torch_seed(rng)
        tgen = torch.Generator().manual_seed(seed)
        enc = build_seeded(seed, lambda: Encoder(LATENT, self.depth)).to(self.device)
        g = build_seeded(seed + 1, lambda: Generator(LATENT, self.depth)).to(self.device)
        d = build_seeded(seed + 2, Discriminator).to(self.device)
        x = resize(self._reals, size).to(self.device)
        params = [*enc.parameters(), *g.parameters()]
        opt_g = torch.optim.Adam(params, lr=self.lr, betas=(0.5, 0.99))
        opt_d = torch.optim.Adam(d.parameters(), lr=self.lr, betas=(0.5, 0.99))
        step = 0
        while step < self.max_steps and time.perf_counter() - start < time_budget_s:
            idx = torch.randint(0, x.shape[0], (self.batch,), generator=tgen)
            real = x[idx.to(self.device)]
            flip = (torch.rand(self.batch, generator=tgen) < 0.5).to(self.device)
            real = torch.where(flip[:, None, None, None], real.flip(-1), real)
            z = enc(real)
            rec = g(z)
            mixed = g(self._mix(z, z.roll(1, 0), tgen))
            fakes = torch.cat([rec, mixed])
            loss_d = (
                F.relu(1 - d(diff_augment(real, tgen))).mean()
                + F.relu(1 + d(diff_augment(fakes.detach(), tgen))).mean()
            )
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            # Cross-entropy, not L1: through the sigmoid its gradient does not vanish on the
            # mostly black backgrounds of scans.
            rec_loss = F.binary_cross_entropy(rec.clamp(1e-6, 1 - 1e-6), real)
            loss_g = rec_loss - self.adv_weight * d(diff_augment(fakes, tgen)).mean()
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            step += 1
        self.steps_trained = step
        self.generator = g.eval()
        with torch.no_grad():
            self._codes = torch.cat([enc.eval()(x[a : a + 64]) for a in range(0, len(x), 64)])
        # Detail statistics: reals vs plain samples at the output shape.
        n_probe = min(64, x.shape[0])
        picks = torch.randint(0, len(x), (n_probe,), generator=tgen)
        reals_np = self._reals[:, 0].numpy().astype(np.float64)
        probe = self._matched(self._raw(picks, tgen), picks)
        # Fill the spectrum from half the generator's Nyquist frequency up.
        self.detail = DetailMatch(reals_np, probe, 0.5 * min(size))
        self.seconds = time.perf_counter() - start

    @torch.no_grad()
    def _raw(self, sources: torch.Tensor, gen: torch.Generator) -> np.ndarray:
        """Decoded mixes of each source real's code with another real's, at the output shape."""
        assert self.generator is not None and self._codes is not None
        others = torch.randint(0, len(self._codes), sources.shape, generator=gen)
        out = []
        for a in range(0, len(sources), 64):
            sl = slice(a, a + 64)
            z = self._mix(self._codes[sources[sl]], self._codes[others[sl]], gen)
            img = self.generator(z).float().cpu()
            out.append(resize(img, self._shape, mode="bicubic")[:, 0].clamp(0, 1))
        return torch.cat(out).numpy().astype(np.float64)

    def sample(self, n: int, rng: np.random.Generator) -> list[np.ndarray]:
        reals, gen = self._sampling(rng)
        assert self.detail is not None
        refs = self._pick(n, gen)
        matched = self._matched(self._raw(refs, gen), refs)
        np_rng = np.random.default_rng(torch_seed(rng))
        out = []
        for i in range(n):
            # Detail on the real's intensity scale, then the real's histogram once more.
            img = self.detail.apply(matched[i], int(refs[i]), np_rng)
            out.append(display_uint8(match_histogram(img, reals[refs[i], 0].numpy())))
        return out

    def _matched(self, raw: np.ndarray, refs: torch.Tensor) -> np.ndarray:
        """Each raw sample histogram-matched to its reference real."""
        reals = self._require_fit()
        return np.stack(
            [match_histogram(r, reals[int(k), 0].numpy()) for r, k in zip(raw, refs, strict=False)]
        )
