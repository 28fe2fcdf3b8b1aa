"""Sample-quality metrics for generators: Fréchet and kernel distances in the features of a
small network the project trains itself, deterministic for given weights.

**RotNet features, not Inception.** FID (Heusel et al. 2017) uses an ImageNet Inception-v3,
whose weights are a download and which sees 8×8 digits as blurry blobs. The offline default
is :class:`RotNet`: a small convolutional network trained once per data set, on (up to
``FEATURE_NET_IMAGES``) training images, to tell which of four rotations an image was given
(the self-supervised pretext task of Gidaris et al. 2018): no labels needed, any image data
set. Its 64 pooled features are the embedding. The distances it gives are named ``fd_rotnet``
and ``kid_rotnet`` everywhere so that nobody reads them as FID; they are comparable between
trials that share a data set (same cached network), not with published FIDs.

The network is kept in the cache the training loop hands the family (``models.family.Cache``;
on disk under ``$SCALINGLAB_CACHE``, default ``~/.cache/scalinglab``) by the SHA-256 of the
training images and the recipe: every trial of a sweep, on any node, uses the same weights
(training is seeded and single-threaded, so a cache miss on another node rebuilds the same
network).

With the spec's ``model.inception_weights`` naming a local copy of the standard FID Inception
weights (``pt_inception-2015-12-05-6726825d.pth``) and ``torch-fidelity`` installed, the
evaluation also reports the standard ``fid_inception`` (torchmetrics' Inception-v3; images
resized to 299×299, gray repeated to RGB).

Determinism: the generated set comes from fixed latents (:func:`fixed_latents`, seed
``EVAL_SEED``), the real set is the held-out split, and KID's random subsets are drawn from
a fixed seed.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from analysis.records import Status

EVAL_SEED = 20241123
MIN_GENERATED = 1024  # generated images scored (at least; more when the held-out set is larger)
FEATURE_NET_IMAGES = 4096  # training images the feature network learns from (at most)
RECIPE = "rotnet-v1: conv32-64-64, 4 rotations, AdamW 3e-3, 400 steps x 128, seed 0"
COLLAPSE_DIVERSITY = 0.25  # samples' feature spread below this fraction of the real images': collapse
DIVERGENCE_FACTOR = 3.0  # fd above this multiple of its best earlier value: diverged


class RotNet(nn.Module):
    """Images in [−1, 1] → 64 features (``forward``); ``rotation_logits`` for training."""

    num_features = 64

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.float())

    def rotation_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward(x))


def content_hash(images: torch.Tensor) -> str:
    """SHA-256 over the uint8 images, their shape and the training recipe (16 hex digits)."""
    h = hashlib.sha256()
    h.update(repr((tuple(images.shape), RECIPE)).encode())
    h.update(np.ascontiguousarray(images.cpu().numpy().astype(np.uint8)).tobytes())
    return h.hexdigest()[:16]


def feature_network(train_images: torch.Tensor, cache) -> RotNet:
    """The RotNet for these training images (uint8 [N, C, H, W]): loaded from ``cache``
    (``models.family.Cache``), or trained (a few seconds on a CPU core) and put there.
    ``cache_hit`` and ``cache_key`` say which."""
    images = train_images[:FEATURE_NET_IMAGES].cpu()
    key = f"feature-nets/rotnet-{content_hash(images)}.pt"
    net = RotNet(images.shape[1])
    saved = cache.get(key)
    if saved is not None:
        net.load_state_dict(torch.load(io.BytesIO(saved), map_location="cpu", weights_only=True))
    else:
        train_rotnet(net, images)
        buffer = io.BytesIO()
        torch.save(net.state_dict(), buffer)
        cache.put(key, buffer.getvalue())  # concurrent trials: the last identical write wins
    net.cache_hit, net.cache_key = saved is not None, key
    return net.eval().requires_grad_(False)


def train_rotnet(net: RotNet, images: torch.Tensor, steps: int = 400, batch: int = 128) -> None:
    """Rotation prediction on random flips of the images, seeded and on one thread."""
    x = images.float() / 127.5 - 1
    gen = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same weights on every machine that rebuilds the cache
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
            for _ in range(steps):
                idx = torch.randint(0, len(x), (batch,), generator=gen)
                k = torch.randint(0, 4, (batch,), generator=gen)
                rotated = torch.stack([torch.rot90(img, int(r), dims=(1, 2)) for img, r in zip(x[idx], k)])
                loss = F.cross_entropy(net.rotation_logits(rotated), k)
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)


def fixed_latents(n: int, latent: int) -> torch.Tensor:
    """The same n latent vectors for every trial with this latent size."""
    return torch.randn((n, latent), generator=torch.Generator().manual_seed(EVAL_SEED))


def distances(features: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
    """Fréchet and kernel distances (torchmetrics) between two sets of images in [−1, 1]
    in ``features``' embedding, plus the samples' ``diversity``: the mean pairwise feature
    distance among the generated images over that among the real ones (≈ 1 for a generator
    that covers the data, → 0 for mode collapse)."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    with torch.no_grad():  # each set through the network once; the metrics get the features
        f_real, f_fake = features(real.float().cpu()), features(fake.float().cpu())
    given = _GivenFeatures(f_real.shape[1])
    fd = FrechetInceptionDistance(feature=given, reset_real_features=False, sync_on_compute=False)
    subset = min(100, len(real), len(fake))
    with warnings.catch_warnings():  # "KID keeps every feature in memory": a few thousand 64-d vectors
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=given, subsets=50, subset_size=subset, sync_on_compute=False)
    for metric in (fd, kid):
        metric.update(f_real, real=True)
        metric.update(f_fake, real=False)
    with torch.random.fork_rng():
        torch.manual_seed(EVAL_SEED)  # KID's subsets
        kid_mean, kid_std = kid.compute()
    spread_real = torch.pdist(f_real.double()).mean()
    spread_fake = torch.pdist(f_fake.double()).mean()
    return {"fd": float(fd.compute()), "kid": float(kid_mean), "kid_std": float(kid_std),
            "diversity": float(spread_fake / spread_real.clamp_min(1e-12))}


class _GivenFeatures(nn.Module):
    """torchmetrics' "feature network" for features already computed: the identity."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def inception_fid(real: torch.Tensor, fake: torch.Tensor, weights: str) -> float:
    """Standard FID (torchmetrics' Inception-v3 from a local weights file)."""
    if not Path(weights).is_file():
        raise ValueError(f"model.inception_weights: no such file {weights!r}; expected the FID "
                        "Inception weights pt_inception-2015-12-05-6726825d.pth")
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance

        fid = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=weights,
                                       normalize=True, sync_on_compute=False)
    except ModuleNotFoundError as exc:
        raise ValueError(f"model.inception_weights is set, but Inception FID needs torch-fidelity: {exc}") from None

    def rgb(x: torch.Tensor) -> torch.Tensor:
        x = ((x.float().cpu() + 1) / 2).clamp(0, 1)
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

    fid.update(rgb(real), real=True)
    fid.update(rgb(fake), real=False)
    return float(fid.compute())


def health(history: list[dict]) -> tuple[Status, str]:
    """(status, caveat) of a GAN trial from its evaluation points so far: ``diverged`` when
    the distance is not finite or has risen above DIVERGENCE_FACTOR × its best earlier value,
    ``collapsed`` when the latest samples' diversity is below COLLAPSE_DIVERSITY, else
    ``completed`` and an empty caveat."""
    last = history[-1]
    fd = last.get("fd_rotnet", float("nan"))
    if not np.isfinite(fd):
        return Status.DIVERGED, f"fd_rotnet is {fd} at step {last.get('step')}"
    earlier = [h["fd_rotnet"] for h in history[:-1] if np.isfinite(h.get("fd_rotnet", float("nan")))]
    if earlier and fd > DIVERGENCE_FACTOR * min(earlier):
        return Status.DIVERGED, (f"fd_rotnet rose from {min(earlier):.4g} to {fd:.4g} at step {last.get('step')} "
                            f"(more than {DIVERGENCE_FACTOR:g}x its best): training destabilised")
    if last.get("diversity", 1.0) < COLLAPSE_DIVERSITY:
        return Status.COLLAPSED, (f"mode collapse: sample diversity {last['diversity']:.3f} of the real images' "
                             f"(below {COLLAPSE_DIVERSITY}) at step {last.get('step')}")
    return Status.COMPLETED, ""
