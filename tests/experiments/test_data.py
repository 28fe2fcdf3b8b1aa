import json
import math

import numpy as np
import pandas as pd
import pytest

from analysis.errors import UserError
from experiments.data import (
    load_tokens,
    markov_chain,
    markov_entropy_rate,
    train_batch,
    validation_batches,
    vocab_size,
)
from experiments.planner import plan
from experiments.spec import DataSpec, SyntheticSpec, load_spec


def test_train_batches_count_tokens_exactly_and_shard_the_global_batch():
    stream = np.arange(10_000)
    full = train_batch(stream, 3, batch_size=8, seq_len=16)
    assert full.shape == (8, 17)
    # consecutive windows: targets never overlap, each window starts where the last ended
    assert (full[1:, 0] == full[:-1, -1]).all()
    shards = [train_batch(stream, 3, 8, 16, rank=r, world=2) for r in range(2)]
    assert all(s.shape == (4, 17) for s in shards)
    merged = np.empty_like(full)
    merged[0::2], merged[1::2] = shards
    assert (merged == full).all()  # the two workers together train on exactly the global batch
    # step s+1 continues after step s: no window is trained twice within an epoch
    nxt = train_batch(stream, 4, 8, 16)
    assert nxt[0, 0] == full[-1, -1]


def test_validation_batches_are_fixed_and_split_evenly_across_workers():
    stream = np.arange(1_000)
    whole = np.concatenate(validation_batches(stream, 320, 32, 4))
    assert whole.shape == (10, 33)
    parts = [np.concatenate(validation_batches(stream, 320, 32, 4, rank=r, world=3)) for r in range(3)]
    assert [len(p) for p in parts] == [3, 3, 3]  # trimmed to equal shares
    again = np.concatenate(validation_batches(stream, 320, 32, 4))
    assert (whole == again).all()


def _docs_jsonl(tmp_path, n=200):
    path = tmp_path / "docs.jsonl"
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"text": f"<doc {i:04d}> " + "lorem ipsum " * (i % 7 + 1)}) + "\n")
    return path


def test_validation_documents_are_never_in_the_training_stream(tmp_path):
    spec = DataSpec(source="files", paths=(str(_docs_jsonl(tmp_path)),), validation_fraction=0.2)
    data = load_tokens(spec, train_tokens=10**9, validation_tokens=10**9)
    train = bytes(data.train.astype(np.uint8)).decode()
    val = bytes(data.validation.astype(np.uint8)).decode()
    train_ids = set(train.split("<doc ")[1:])
    val_ids = {s[:4] for s in val.split("<doc ")[1:]}
    assert val_ids and not (val_ids & {s[:4] for s in train_ids})
    assert len(val_ids) + len(train_ids) == 200
    assert 10 < len(val_ids) < 70  # ~20% held out
    # the split is a fixed function of the document index: the same on every call
    again = load_tokens(spec, train_tokens=10**9, validation_tokens=10**9)
    assert (again.validation == data.validation).all()


@pytest.mark.parametrize("order", ["larger first", "smaller first"])
def test_a_smaller_budget_after_a_larger_one_reads_what_a_fresh_read_gives(tmp_path, order):
    """The process keeps its longest read and serves smaller budgets from it: the training
    stream must end where a read of that budget alone ends (the same document), or the data
    (and where a short stream wraps around) would depend on what the process ran before."""
    import experiments.data as data_module

    spec = DataSpec(source="files", paths=(str(_docs_jsonl(tmp_path)),), validation_fraction=0.2)
    budgets = {"small": 1000, "large": 5000, "beyond": 10**9}  # the last exhausts the source
    fresh = {name: data_module._read(spec, tokens, 500).data for name, tokens in budgets.items()}  # reads, uncut
    data_module._READS.clear()
    names = ["beyond", "large", "small"] if order == "larger first" else ["small", "large", "beyond", "small"]
    for name in names:
        got = load_tokens(spec, train_tokens=budgets[name], validation_tokens=500)
        assert len(got.train) == len(fresh[name].train) and (got.train == fresh[name].train).all(), name
        assert (got.validation == fresh[name].validation).all() and got.bytes_per_token == fresh[name].bytes_per_token
    assert len(fresh["small"].train) < len(fresh["large"].train) < len(fresh["beyond"].train)
    assert len(data_module._READS) == 1  # one read served every budget after the longest


def test_local_text_jsonl_and_parquet_files_read_alike(tmp_path):
    texts = [f"document number {i} " * 5 for i in range(40)]
    (tmp_path / "t").mkdir()
    txt = []
    for i, t in enumerate(texts):
        p = tmp_path / "t" / f"{i:02d}.txt"
        p.write_text(t)
        txt.append(str(p))
    pd.DataFrame({"body": texts}).to_parquet(tmp_path / "d.parquet")
    a = load_tokens(DataSpec(source="files", paths=tuple(txt)), train_tokens=10**6, validation_tokens=10**6)
    b = load_tokens(DataSpec(source="files", paths=(str(tmp_path / "d.parquet"),), text_field="body"),
                    train_tokens=10**6, validation_tokens=10**6)
    assert (a.train == b.train).all() and (a.validation == b.validation).all()
    assert len(a.train) + len(a.validation) == sum(len(t.encode()) for t in texts)


def test_stdlib_source_reads_real_text_offline():
    data = load_tokens(DataSpec(), train_tokens=50_000, validation_tokens=5_000)
    assert len(data.train) >= 50_000 and len(data.validation) >= 5_000
    assert data.vocab == 256 and data.train.max() < 256
    assert b"def " in bytes(data.train[:50_000].astype(np.uint8))
    assert data.bytes_per_token == 1.0  # the byte tokenizer


def test_bytes_per_token_counts_the_validation_texts_utf8_bytes(tmp_path, monkeypatch):
    """What bits per byte divides by: for a tokenizer of k bytes per token, k (here a fake
    tokenizer stands in for a Hugging Face one: two bytes per token)."""
    import experiments.data as data_module

    spec = DataSpec(source="files", paths=(str(_docs_jsonl(tmp_path)),), validation_fraction=0.25)
    monkeypatch.setattr(data_module, "_encoder",
                        lambda name: (lambda text: np.zeros(len(text.encode()) // 2, dtype=np.int64)))
    data = load_tokens(spec, train_tokens=10**6, validation_tokens=10**6)
    assert data.bytes_per_token == pytest.approx(2.0, rel=0.05)  # (an odd byte per document is dropped)
    assert np.isnan(load_tokens(DataSpec(source="synthetic"), train_tokens=0, validation_tokens=0).bytes_per_token)


def test_bad_data_inputs_get_clear_errors(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        load_tokens(DataSpec(source="files", paths=(str(tmp_path / "missing.txt"),)), train_tokens=1, validation_tokens=1)
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(UserError, match="expected .txt, .jsonl or .parquet"):
        load_tokens(DataSpec(source="files", paths=(str(tmp_path / "x.csv"),)), train_tokens=1, validation_tokens=1)
    with pytest.raises(UserError, match="column 'content'"):
        load_tokens(DataSpec(source="files", paths=(str(_docs_jsonl(tmp_path)),), text_field="content"),
                    train_tokens=1, validation_tokens=1)


def test_hub_dataset_offline_fails_clearly():
    spec = DataSpec(source="hub", name="scalinglab-no-such-user/no-such-dataset")
    with pytest.raises(UserError, match="cannot stream hub dataset"):
        load_tokens(spec, train_tokens=1, validation_tokens=1)


def test_synthetic_entropy_rate_matches_the_empirical_conditional_entropy():
    spec = SyntheticSpec(vocab=8, concentration=0.5, seed=3, train_tokens=400_000, documents=16)
    p, pi = markov_chain(spec)
    assert np.allclose(p.sum(axis=1), 1) and np.allclose(pi @ p, pi)  # π is stationary
    h = markov_entropy_rate(spec)
    assert 0 < h < math.log(8)
    data = load_tokens(DataSpec(source="synthetic", synthetic=spec), train_tokens=0, validation_tokens=0)
    assert data.entropy_rate == pytest.approx(h) and vocab_size(DataSpec(source="synthetic", synthetic=spec)) == 8
    # the true chain scores exactly its entropy rate (up to sampling noise) on held-out tokens
    v = data.validation
    nll = -np.log(p[v[:-1], v[1:]]).mean()
    assert nll == pytest.approx(h, rel=0.02)
    # and the empirical transition matrix from the training stream recovers it
    counts = np.zeros((8, 8))
    np.add.at(counts, (data.train[:-1], data.train[1:]), 1)
    assert np.abs(counts / counts.sum(axis=1, keepdims=True) - p).max() < 0.02


TOKEN_SPEC = """\
name: x
model: {{sizes: [{{d_model: 16, n_layers: 1, n_heads: 1}}]}}
budgets: {{tokens: [4096]}}
data: {data}
training: {{batch_size: 4, seq_len: 32}}
evaluation: {{validation_tokens: 256}}
"""


@pytest.mark.parametrize("data, field, message", [
    ("{source: files, paths: [table.csv]}", "data.paths.0", "expected .txt, .jsonl or .parquet"),
    ("{source: files, paths: [docs.jsonl], text_field: content}", "data.text_field", "column 'content' not in"),
    ("{source: files, paths: [docs.parquet], text_field: body}", "data.text_field", "column 'body' not in"),
    ("{source: files, paths: [missing.txt]}", "data.paths.0", "file not found"),
])
def test_token_data_that_no_trial_could_read_is_refused_at_load(write_spec, tmp_path, data, field, message):
    import re

    import pandas as pd

    (tmp_path / "table.csv").write_text("a,b\n1,2\n")
    _docs_jsonl(tmp_path)
    pd.DataFrame({"text": ["one document", "another"]}).to_parquet(tmp_path / "docs.parquet")
    with pytest.raises(UserError, match=rf"spec.yaml:\d+: {re.escape(field)}: .*{message}"):
        plan(*load_spec(write_spec(TOKEN_SPEC.format(data=data))))
