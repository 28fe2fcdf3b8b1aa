"""Image data: the offline sources, local folders and Parquet through `datasets`, the split,
batching, and the errors a user sees for bad images or a spec that does not fit the family."""

from __future__ import annotations

import re

import numpy as np
import pytest

from analysis.errors import UserError
from experiments.image_data import image_train_batch, image_validation_batches, load_images, procedural_images
from experiments.planner import plan
from experiments.spec import DataSpec, load_spec


def test_digits_are_the_bundled_8x8_set_split_once():
    data = load_images(DataSpec(source="digits"), train_samples=0, validation_samples=10_000)
    assert data.train.dtype == np.uint8 and data.train.shape[1:] == (1, 8, 8)
    assert len(data.train) + len(data.validation) == 1797
    assert 0.02 < len(data.validation) / 1797 < 0.09  # validation_fraction 0.05, hashed
    assert data.train.max() == 255 and data.train.min() == 0  # 16 grey levels -> 0..255
    again = load_images(DataSpec(source="digits"), train_samples=0, validation_samples=10_000)
    assert np.array_equal(again.validation, data.validation)
    train_rows = {row.tobytes() for row in data.train}
    assert sum(row.tobytes() in train_rows for row in data.validation) <= 2  # no shared images (bar duplicates)


def test_procedural_images_are_seeded_per_index_and_unlimited():
    spec = DataSpec(source="procedural", image_size=16, channels=3, procedural_seed=7)
    a = procedural_images(spec, 0, 1500, stream=0)
    b = procedural_images(spec, 1000, 100, stream=0)
    assert a.shape == (1500, 3, 16, 16) and a.dtype == np.uint8
    assert np.array_equal(a[1000:1100], b)  # image i is the same whatever is asked for
    assert len({img.tobytes() for img in a}) == 1500  # no repeats
    val = procedural_images(spec, 0, 100, stream=1)
    assert not any(np.array_equal(v, t) for v in val[:20] for t in a[:200])
    other = procedural_images(DataSpec(source="procedural", image_size=16, channels=3), 0, 10, stream=0)
    assert not np.array_equal(other, a[:10])  # the seed matters
    assert a.std() > 40  # shapes and textures, not flat grey
    data = load_images(spec, train_samples=64, validation_samples=32)
    assert data.train.shape[0] == 64 and data.validation.shape[0] == 32


def test_batches_walk_the_images_and_shard_over_workers():
    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
    assert image_train_batch(images, 0, 4)[:, 0, 0, 0].tolist() == [0, 1, 2, 3]
    assert image_train_batch(images, 2, 4)[:, 0, 0, 0].tolist() == [8, 9, 0, 1]  # wraps around
    assert image_train_batch(images, 1, 4, rank=1, world=2)[:, 0, 0, 0].tolist() == [5, 7]
    shards = [image_validation_batches(images, 2, rank=r, world=3) for r in range(3)]
    seen = sorted(int(x) for s in shards for b in s for x in b.ravel())
    assert seen == list(range(9))  # 10 trimmed to a multiple of 3, no image twice


def _write_pngs(folder, sizes, mode="L"):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, size in enumerate(sizes):
        shape = (size, size) if mode == "L" else (size, size, 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(folder / f"img{i:03d}.png")


def test_image_folder_through_datasets(tmp_path):
    _write_pngs(tmp_path / "imgs" / "a", [8] * 30)
    _write_pngs(tmp_path / "imgs" / "b", [8] * 30, mode="RGB")
    spec = DataSpec(source="images", paths=(str(tmp_path / "imgs"),), validation_fraction=0.2)
    data = load_images(spec, train_samples=0, validation_samples=100)
    assert data.train.shape[1:] == (1, 8, 8) and len(data.train) + len(data.validation) == 60
    rgb = load_images(DataSpec(source="images", paths=(str(tmp_path / "imgs" / "b"),), channels=3,
                               validation_fraction=0.2), train_samples=0, validation_samples=100)
    assert rgb.train.shape[1:] == (3, 8, 8)


def test_parquet_image_column_through_datasets(tmp_path):
    import datasets
    from PIL import Image

    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)) for _ in range(40)]
    ds = datasets.Dataset.from_dict({"picture": images}, features=datasets.Features({"picture": datasets.Image()}))
    ds.to_parquet(str(tmp_path / "pics.parquet"))
    spec = DataSpec(source="images", paths=(str(tmp_path / "pics.parquet"),), image_field="picture",
                    validation_fraction=0.25)
    data = load_images(spec, train_samples=0, validation_samples=100)
    assert len(data.train) + len(data.validation) == 40
    first = np.asarray(images[0])
    assert any(np.array_equal(x[0], first) for x in np.concatenate([data.train, data.validation]))
    with pytest.raises(UserError, match="column 'image' not in"):
        load_images(DataSpec(source="images", paths=spec.paths), train_samples=0, validation_samples=10)


def test_mismatched_and_unreadable_images_are_named(tmp_path):
    _write_pngs(tmp_path / "mixed", [8] * 5 + [10])
    spec = DataSpec(source="images", paths=(str(tmp_path / "mixed"),), validation_fraction=0.3)
    with pytest.raises(UserError, match=r"img005\.png is 10x10 pixels, expected 8x8 .*resize: true"):
        load_images(spec, train_samples=0, validation_samples=10)
    resized = load_images(DataSpec(source="images", paths=spec.paths, validation_fraction=0.3, resize=True),
                          train_samples=0, validation_samples=10)
    assert len(resized.train) + len(resized.validation) == 6
    _write_pngs(tmp_path / "broken", [8] * 3)
    (tmp_path / "broken" / "img001.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(UserError, match=r"cannot read .*img001\.png"):
        load_images(DataSpec(source="images", paths=(str(tmp_path / "broken"),)), train_samples=0,
                    validation_samples=10)


@pytest.mark.parametrize("body,message", [
    ("family: diffusion\nbudgets: {tokens: [1000]}\ndata: {source: digits}\n",
     "budgets.tokens: family .diffusion. counts data in samples: give budgets.samples"),
    ("family: diffusion\nbudgets: {samples: [1000]}\n",
     "data.source: family 'diffusion' trains on samples; expected one of"),
    ("family: transformer\nbudgets: {samples: [1000]}\n", "budgets.samples: family .transformer. counts data in tokens: give budgets.tokens"),
    ("family: vae\nbudgets: {samples: [1000]}\ndata: {source: digits}\nmodel_extra: {}\n", "unknown field"),
])
def test_specs_that_do_not_fit_the_family_are_refused(write_spec, body, message):
    sizes = "{width: 8, depth: 1, latent: 4}" if "vae" in body else "{d_model: 16, n_layers: 1, n_heads: 1}"
    path = write_spec(f"name: x\nmodel:\n  sizes: [{sizes}]\n" + body)
    with pytest.raises(UserError, match=message):
        plan(*load_spec(path))


def test_shape_fields_and_options_are_checked_against_the_family(write_spec):
    base = "name: x\nfamily: vae\nbudgets: {samples: [1000]}\ndata: {source: digits}\n"
    expected = r"\['depth', 'latent', 'params', 'width', 'workers', 'zero_stage'\]"
    with pytest.raises(UserError, match=r"spec.yaml:\d+: model.sizes.0.d_model: unknown field; expected one of " + expected):
        plan(*load_spec(write_spec(base + "model:\n  sizes: [{d_model: 16, n_layers: 1, n_heads: 1}]\n")))
    with pytest.raises(UserError, match=r"spec.yaml:\d+: model.sizes.0.latent: is required"):
        plan(*load_spec(write_spec(base + "model:\n  sizes: [{width: 8, depth: 1}]\n")))
    with pytest.raises(UserError, match=r"spec.yaml:\d+: model.noise_schedule: unknown field; expected one of "
                                        r"\['iw_samples', 'likelihood', 'sizes'\]"):
        plan(*load_spec(write_spec(base + "model:\n  noise_schedule: linear\n  sizes: [{width: 8, depth: 1, latent: 4}]\n")))
    with pytest.raises(UserError, match=r"spec.yaml:\d+: model.likelihood: expected one of \['gaussian', 'bernoulli'\]"):
        plan(*load_spec(write_spec(base + "model:\n  likelihood: poisson\n  sizes: [{width: 8, depth: 1, latent: 4}]\n")))
    trials = plan(*load_spec(write_spec(base + "model:\n  likelihood: bernoulli\n  sizes: [{width: 8, depth: 1, latent: 4}, {params: 3.0e5}]\n")))
    assert {t.shape.likelihood for t in trials} == {"bernoulli"}
    assert all(t.data_unit == "samples" and t.data_units == t.steps * 16 for t in trials)  # batch_size 16
    big = max(trials, key=lambda t: t.n_params)
    assert 0.7e5 < big.n_params < 1.3 * 3e5 and big.flops == pytest.approx(big.flops_per_unit * big.data_units)


def test_hub_image_dataset_offline_fails_clearly():
    spec = DataSpec(source="hub", name="scalinglab-no-such-user/no-such-images")
    with pytest.raises(UserError, match="cannot stream hub dataset .*source: images with a local copy"):
        load_images(spec, train_samples=10, validation_samples=10)


IMAGE_SPEC = """\
name: x
family: vae
model: {{sizes: [{{width: 4, depth: 1, latent: 4}}]}}
budgets: {{samples: [256]}}
data: {data}
training: {{batch_size: 16}}
evaluation: {{validation_samples: 16}}
"""


@pytest.mark.parametrize("data, field, message", [
    ("{source: digits, image_size: 16}", "data.image_size", "the digits are 8x8 pixels; set image_size: 8"),
    ("{source: images, paths: [imgs], image_size: 16}", "data.image_size", r"img000\.png is 8x8 pixels, expected 16x16"),
    ("{source: images, paths: [broken]}", "data.paths.0", r"cannot read .*img000\.png"),
    ("{source: images, paths: [empty]}", "data.paths.0", "no image files"),
    ("{source: images, paths: [notes.txt]}", "data.paths.0", "expected an image folder, image files"),
    ("{source: images, paths: [pics.parquet]}", "data.image_field", "column 'image' not in"),
])
def test_image_data_that_no_trial_could_read_is_refused_at_load(write_spec, tmp_path, data, field, message):
    """Before launch, not as a failed trial: the first image of every path, columns, sizes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    _write_pngs(tmp_path / "imgs", [8] * 3)
    _write_pngs(tmp_path / "broken", [8])
    (tmp_path / "broken" / "img000.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("text")
    pq.write_table(pa.table({"picture": [b"x"]}), tmp_path / "pics.parquet")
    path = write_spec(IMAGE_SPEC.format(data=data))
    with pytest.raises(UserError, match=rf"spec.yaml:\d+: {re.escape(field)}: .*{message}"):
        plan(*load_spec(path))
    assert plan(*load_spec(write_spec(IMAGE_SPEC.format(data="{source: images, paths: [imgs]}"), name="ok.yaml")))
