"""Image data for the image families (diffusion, VAE), through Hugging Face ``datasets``.

Sources (``DataSpec.source``):
- ``digits``: scikit-learn's bundled 8×8 handwritten digits (1,797 images, no download);
  its 17 grey levels 0…16 become 8-bit values round(v · 255 / 16).
- ``procedural``: a seeded generator of shapes and textures (discs, rings, rectangles,
  stripes, checkerboards, in random grey levels or colours) at any ``image_size``, with
  unlimited samples: a trial of D samples trains on D distinct images, image i being the
  same in every trial (so smaller budgets see a prefix of what larger ones see), and the
  validation images come from a separate seeded stream.
- ``images``: local files through ``datasets``: image folders (``imagefolder``; a path to a
  directory or to image files) and Parquet or Arrow files with an image column
  (``image_field``, as ``datasets`` writes its ``Image`` feature: encoded bytes).
- ``hub``: any Hugging Face dataset name, streamed (needs network; fails clearly offline).

Pixels are kept as ``uint8`` [N, C, H, W]; each family scales them (``models.images``).
Images are converted to greyscale (``channels: 1``) or RGB (``channels: 3``). One of a
different size than ``image_size`` is an error naming it, unless ``resize: true`` (bilinear).
Split: for digits, files and hub, image i goes to validation when a seeded hash of i falls
under ``validation_fraction`` (the same rule as text documents), so the split is fixed.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from analysis.errors import UserError
from experiments.data import _is_validation, check_column, hub_error
from experiments.spec import DataSpec, Source
from experiments.yamlio import FieldError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
_CHUNK = 1024  # procedural images are generated in seeded chunks of this many
DIGITS_SIZE = 8  # scikit-learn's digits are 8x8


@dataclass(frozen=True)
class ImageData:
    train: np.ndarray  # uint8 [N, C, H, W]
    validation: np.ndarray  # uint8 [M, C, H, W]


def load_images(spec: DataSpec, *, train_samples: int, validation_samples: int) -> ImageData:
    """The training images (all of them, or ``train_samples`` for the unlimited procedural
    source) and the first ``validation_samples`` of the fixed validation split."""
    if spec.source == Source.PROCEDURAL:
        return ImageData(
            procedural_images(spec, 0, train_samples, stream=0),
            procedural_images(spec, 0, validation_samples, stream=1),
        )
    if spec.source == Source.DIGITS:
        pixels = _digits(spec)
    else:
        pixels = _decoded(spec)
    train: list[np.ndarray] = []
    val: list[np.ndarray] = []
    for index, image in enumerate(pixels):
        (val if _is_validation(index, spec.validation_fraction) else train).append(image)
        if spec.source == Source.HUB and len(train) >= train_samples and len(val) >= validation_samples:
            break
    if not train or not val:
        raise UserError(
            f"data: source {spec.source!r} gave {len(train)} training and {len(val)} validation "
            "images; it needs images in both splits (more images, or another validation_fraction)"
        )
    return ImageData(np.stack(train), np.stack(val[:validation_samples]))


def check_image_data(spec: DataSpec) -> None:
    """Before launch: the digits' size, and for an ``images`` source that every path exists
    and is readable, that a Parquet or Arrow file has the image column, and that the first
    image of every folder or file list has ``image_size`` (unless ``resize``). The images after
    the first are checked when a trial reads them."""
    if spec.source == Source.DIGITS and spec.image_size != DIGITS_SIZE and not spec.resize:
        raise FieldError(("image_size",), f"the digits are {DIGITS_SIZE}x{DIGITS_SIZE} pixels; set image_size: "
                         f"{DIGITS_SIZE}, or resize: true to rescale them to {spec.image_size}")
    if spec.source != Source.IMAGES:
        return
    for i, name in enumerate(spec.paths):
        try:
            groups = _group((name,))
        except UserError as exc:
            raise FieldError(("paths", i), str(exc).split(": ", 1)[-1]) from None
        for builder, files in groups:
            if builder == "imagefolder":
                _check_first_image(spec, files[0], ("paths", i))
            else:
                check_column(files[0], builder, spec.image_field, ("image_field",))


def _check_first_image(spec: DataSpec, path: Path, field: tuple) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            size = image.size
    except (UnidentifiedImageError, OSError) as exc:
        raise FieldError(field, f"cannot read {path}: {exc}") from None
    if size != (spec.image_size, spec.image_size) and not spec.resize:
        raise FieldError(("image_size",), f"{path} is {size[0]}x{size[1]} pixels, expected {spec.image_size}x"
                         f"{spec.image_size}; set data.image_size to match, or resize: true to rescale images")


# --- sources --------------------------------------------------------------------------------

def _digits(spec: DataSpec) -> Iterator[np.ndarray]:
    from sklearn.datasets import load_digits

    images = np.round(load_digits().images * (255 / 16)).astype(np.uint8)  # [1797, 8, 8]
    for i, image in enumerate(images):
        yield _conform(_pil(image), spec, f"digits image {i}")


def _pil(array: np.ndarray):
    from PIL import Image

    return Image.fromarray(array)


def _conform(image, spec: DataSpec, where: str) -> np.ndarray:
    """A PIL image as uint8 [C, H, W] at the spec's channels and size."""
    from PIL import Image

    image = image.convert("L" if spec.channels == 1 else "RGB")
    size = (spec.image_size, spec.image_size)
    if image.size != size:
        if not spec.resize:
            raise UserError(
                f"data: {where} is {image.size[0]}x{image.size[1]} pixels, expected "
                f"{spec.image_size}x{spec.image_size} (data.image_size); set data.resize: true "
                "to rescale images"
            )
        image = image.resize(size, Image.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _decoded(spec: DataSpec) -> Iterator[np.ndarray]:
    """Images of a local (``images``) or hub source, decoded by us so that a broken file
    gives an error naming it."""
    from PIL import Image, UnidentifiedImageError

    for where, value in _rows(spec):
        try:
            if isinstance(value, Image.Image):
                image = value
            elif isinstance(value, dict) and (value.get("bytes") or value.get("path")):
                raw = value.get("bytes") or Path(value["path"]).read_bytes()
                image = Image.open(io.BytesIO(raw))
                image.load()
            else:
                raise UserError(
                    f"data.image_field: {where} holds {type(value).__name__}, not an image "
                    "(expected encoded image bytes or a path)"
                )
        except (UnidentifiedImageError, OSError) as exc:
            raise UserError(f"data: cannot read {where}: {exc}") from None
        yield _conform(image, spec, where)


def _rows(spec: DataSpec) -> Iterator[tuple[str, object]]:
    import datasets

    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_error()
    field = spec.image_field
    if spec.source == Source.HUB:
        try:
            ds = datasets.load_dataset(spec.name, spec.config, split=spec.split, streaming=True)
            ds = ds.cast_column(field, datasets.Image(decode=False))
            for i, row in enumerate(ds):
                yield f"{spec.name} row {i}", row[field]
        except (KeyError, ValueError) as exc:
            raise UserError(f"data.image_field: {field!r} is not an image column of {spec.name}: {exc}") from None
        except UserError:
            raise
        except Exception as exc:  # offline, unknown name, gated: all look alike from here
            raise hub_error(spec, exc, Source.IMAGES) from None
        return
    for builder, files in _group(spec.paths):
        try:
            if builder == "imagefolder":
                ds = datasets.load_dataset("imagefolder", data_files=[str(f) for f in files], split="train")
                column = "image"
            else:
                ds = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train")
                column = field
        except Exception as exc:  # datasets raises many types for unreadable files
            raise UserError(f"data.paths: cannot read {builder} files {[str(f) for f in files[:3]]}: {exc}") from None
        if column not in ds.column_names:
            raise UserError(f"data.image_field: column {column!r} not in {files[0]} (columns: {ds.column_names})")
        if isinstance(ds.features[column], datasets.Image):
            ds = ds.cast_column(column, datasets.Image(decode=False))
        for i, value in enumerate(ds[column]):
            path = value.get("path") if isinstance(value, dict) else None
            yield (path or f"{files[0].name} row {i}"), value


def _group(paths: tuple[str, ...]) -> list[tuple[str, list[Path]]]:
    """Files by ``datasets`` builder; directories expand to the images under them (sorted)."""
    groups: dict[str, list[Path]] = {}
    for p in map(Path, paths):
        if p.is_dir():
            images = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise UserError(f"data.paths: no image files ({sorted(IMAGE_SUFFIXES)}) under {p}")
            groups.setdefault("imagefolder", []).extend(images)
            continue
        if not p.is_file():
            raise UserError(f"data.paths: not found: {p}")
        suffix = p.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            groups.setdefault("imagefolder", []).append(p)
        elif suffix in (".parquet", ".arrow"):
            groups.setdefault(suffix[1:], []).append(p)
        else:
            raise UserError(
                f"data.paths: cannot read {p}: expected an image folder, image files, .parquet or .arrow"
            )
    return list(groups.items())


# --- procedural generator --------------------------------------------------------------------

def procedural_images(spec: DataSpec, start: int, count: int, *, stream: int) -> np.ndarray:
    """Images ``start`` … ``start + count − 1`` of seeded stream ``stream`` (0: training,
    1: validation), uint8 [count, C, H, W]. Image i depends only on (seed, stream, i)."""
    first, last = start // _CHUNK, (start + count - 1) // _CHUNK
    chunks = [_procedural_chunk(spec, stream, j) for j in range(first, last + 1)]
    images = np.concatenate(chunks) if chunks else np.zeros((0, spec.channels, spec.image_size, spec.image_size), np.uint8)
    offset = start - first * _CHUNK
    return images[offset: offset + count]


def _procedural_chunk(spec: DataSpec, stream: int, chunk: int) -> np.ndarray:
    rng = np.random.default_rng([spec.procedural_seed, stream, chunk])
    n, s, c = _CHUNK, spec.image_size, spec.channels
    coords = (np.arange(s) + 0.5) / s
    yy, xx = coords[None, :, None], coords[None, None, :]
    col = lambda v: v[:, None, None]  # noqa: E731 (per-image scalars against the pixel grid)
    kind = rng.integers(0, 5, n)
    cx, cy = rng.uniform(0.3, 0.7, (2, n))
    radius = rng.uniform(0.15, 0.35, n)
    half_w, half_h = rng.uniform(0.12, 0.35, (2, n))
    theta, phase = rng.uniform(0, np.pi, n), rng.uniform(0, 2 * np.pi, n)
    freq = rng.uniform(1.5, 3.5, n)
    cells = rng.integers(2, 5, n)
    dist = np.hypot(xx - col(cx), yy - col(cy))
    masks = np.stack([
        dist < col(radius),  # disc
        np.abs(dist - col(radius)) < max(0.08, 1.0 / s),  # ring
        (np.abs(xx - col(cx)) < col(half_w)) & (np.abs(yy - col(cy)) < col(half_h)),  # rectangle
        np.sin(2 * np.pi * col(freq) * (xx * col(np.cos(theta)) + yy * col(np.sin(theta))) + col(phase)) > 0,  # stripes
        (np.floor(xx * col(cells)) + np.floor(yy * col(cells))) % 2 == 0,  # checkerboard
    ])
    mask = masks[kind, np.arange(n)].astype(np.float64)  # [n, s, s]
    background = rng.uniform(0, 1, (n, c))
    contrast = rng.uniform(0.4, 0.8, (n, c)) * np.where(background < 0.5, 1, -1)
    foreground = np.clip(background + contrast, 0, 1)
    images = background[:, :, None, None] + (foreground - background)[:, :, None, None] * mask[:, None]
    return np.round(images * 255).astype(np.uint8)


# --- batching -----------------------------------------------------------------------------------

def image_train_batch(images: np.ndarray, step: int, batch_size: int, rank: int = 0, world: int = 1) -> np.ndarray:
    """Rows ``rank::world`` of global batch ``step`` (image indices step·B … step·B+B−1,
    wrapping around after the last training image): [batch_size/world, C, H, W]."""
    rows = (step * batch_size + np.arange(rank, batch_size, world)) % len(images)
    return images[rows]


def image_validation_batches(images: np.ndarray, batch_size: int, rank: int = 0, world: int = 1) -> list[np.ndarray]:
    """This worker's share of the validation images, trimmed to a multiple of ``world``."""
    n = len(images) - len(images) % world
    if n < world:
        raise UserError(f"evaluation.validation_samples: only {len(images)} validation images for {world} workers")
    mine = images[np.arange(rank, n, world)]
    return [mine[i: i + batch_size] for i in range(0, len(mine), batch_size)]
