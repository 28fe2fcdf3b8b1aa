"""Capability probes: items, the held-out split, mixing into the training stream, scoring."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from analysis.errors import UserError
from experiments.planner import plan
from experiments.probes import evaluate_probes, held_out, mix_into, training_text
from experiments.spec import ProbeSpec, load_spec

SPEC = ProbeSpec(tasks=("addition", "modular", "recall", "walk"), mix_rate=0.5, eval_items=64, digits=2, steps=6)


def test_items_are_correct_and_held_out_items_are_never_trained_on():
    items = held_out(SPEC)
    assert {t: len(v) for t, v in items.items()} == {"addition": 64, "modular": 64, "recall": 64, "walk": 64}
    for prompt, answer in items["addition"]:
        a, b = prompt[:-1].split("+")
        assert int(answer) == int(a) + int(b) and answer.endswith("\n")
    for prompt, answer in items["modular"]:
        a, rest = prompt[:-1].split("+")
        b, m = rest.split("%")
        assert int(answer) == (int(a) + int(b)) % int(m)
    for prompt, answer in items["recall"]:
        pairs, key = prompt[:-1].split("|")
        assert dict(p.split(":") for p in pairs.split(","))[key] == answer.strip()
    successor: dict[str, str] = {}  # walk: one fixed successor per symbol, over every item
    for prompt, answer in items["walk"]:
        tag, start = prompt.split("=")
        assert len(tag) == 3 and len(start) == 1 and len(answer) == 6 + 1 and answer.endswith("\n")
        path = start + answer.strip()
        for here, there in zip(path, path[1:]):
            assert successor.setdefault(here, there) == there
    assert len(set(successor.values())) == len(successor) > 40  # a permutation, seen widely
    text = training_text(SPEC, np.random.default_rng(0), 200_000).decode()
    # a line's prompt: up to '=' (walk, the only task without '+' or '|': and the start symbol)
    trained = {line[: line.index("=") + (1 if "+" in line or "|" in line else 2)] for line in text.splitlines()}
    held = {p for v in items.values() for p, _ in v}
    assert len(trained) > 1000 and not trained & held


def test_mixing_replaces_a_seeded_share_of_rows_the_same_on_every_worker():
    batch = np.full((64, 33), 7, dtype=np.int64)
    mixed = mix_into(batch, SPEC, step=5, batch_size=64, rank=0, world=1)
    replaced = (mixed != 7).any(axis=1)
    assert 0.3 < replaced.mean() < 0.7 and mixed.shape == batch.shape
    assert np.array_equal(mixed, mix_into(batch, SPEC, step=5, batch_size=64, rank=0, world=1))
    halves = [mix_into(batch[r::2], SPEC, step=5, batch_size=64, rank=r, world=2) for r in range(2)]
    assert np.array_equal(halves[0], mixed[0::2]) and np.array_equal(halves[1], mixed[1::2])
    assert np.array_equal(mix_into(batch, ProbeSpec(), 5, 64, 0, 1), batch)  # no probes: untouched


class _Oracle(torch.nn.Module):
    """A 'model' whose next-byte logits put all mass on the true next byte of each held-out
    item (or on a wrong byte, when ``wrong``)."""

    def __init__(self, texts: list[bytes], wrong: bool = False):
        super().__init__()
        self.texts, self.wrong = texts, wrong

    def forward(self, idx):
        b, t = idx.shape
        logits = torch.full((b, t, 256), -20.0)
        for i in range(b):
            row = bytes(idx[i].tolist())
            stripped = row.rstrip(b"\x00")  # the item's text, or all of it but its last byte
            text = next(x for x in self.texts if stripped in (x, x[:-1]))
            for j in range(t):
                nxt = text[j + 1] if j + 1 < len(text) else 0
                logits[i, j, (nxt + 1) % 256 if self.wrong else nxt] = 20.0
        return logits


def test_scoring_on_a_perfect_and_a_wrong_model():
    spec = ProbeSpec(tasks=("addition",), mix_rate=0.5, eval_items=16)
    texts = [(p + a).encode() for p, a in held_out(spec)["addition"]]
    perfect = evaluate_probes(_Oracle(texts), spec, context=64, device="cpu")
    assert perfect["addition/exact_match"] == 1.0 and perfect["addition/token_accuracy"] == 1.0
    assert perfect["addition/logprob"] == pytest.approx(0.0, abs=1e-6)
    wrong = evaluate_probes(_Oracle(texts, wrong=True), spec, context=64, device="cpu")
    assert wrong["addition/exact_match"] == 0.0 and wrong["addition/token_accuracy"] == 0.0
    assert wrong["addition/logprob"] < -30
    assert math.isfinite(wrong["addition/logprob"])


def test_chance_levels_and_answer_length_are_recorded_with_the_metrics():
    spec = ProbeSpec(tasks=("walk", "recall"), mix_rate=0.5, eval_items=16, steps=16)
    texts = [(p + a).encode() for task in spec.tasks for p, a in held_out(spec)[task]]
    got = evaluate_probes(_Oracle(texts), spec, context=64, device="cpu")
    # walk: 16 symbols and a newline, each one of 63; recall: a digit and a newline, each one of 11
    assert got["walk/answer_tokens"] == 17 and got["recall/answer_tokens"] == 2
    assert got["walk/token_accuracy_chance"] == pytest.approx(1 / 63)
    assert got["walk/logprob_chance"] == pytest.approx(-math.log(63))
    assert got["walk/exact_match_chance"] == pytest.approx(63.0 ** -17)
    assert got["recall/exact_match_chance"] == pytest.approx(1 / 121)


def test_probe_specs_are_checked(write_spec):
    base = "name: p\nmodel:\n  sizes: [{d_model: 16, n_layers: 1, n_heads: 1}]\nbudgets: {tokens: [4096]}\n"
    with pytest.raises(UserError, match="probes: tasks are given but mix_rate is 0"):
        load_spec(write_spec(base + "probes: {tasks: [addition]}\n"))
    with pytest.raises(UserError, match=r"probes.tasks.0: expected one of \['addition', 'modular', 'recall', 'walk'\]"):
        load_spec(write_spec(base + "probes: {tasks: [sorting], mix_rate: 0.1}\n"))
    image = ("name: p\nfamily: vae\nmodel:\n  sizes: [{width: 4, depth: 1, latent: 2}]\nbudgets: {samples: [64]}\n"
             "data: {source: digits}\nprobes: {tasks: [addition], mix_rate: 0.1}\n")
    with pytest.raises(UserError, match="capability probes are text tasks for language models"):
        plan(*load_spec(write_spec(image)))
    trials = plan(*load_spec(write_spec(base + "probes: {tasks: [recall], mix_rate: 0.25, pairs: 3}\n")))
    assert trials[0].probes.tasks == ("recall",) and trials[0].probes.pairs == 3
    with pytest.raises(UserError, match="steps in 1..48"):
        load_spec(write_spec(base + "probes: {tasks: [walk], mix_rate: 0.25, steps: 60}\n"))
    from experiments.planner import TrialConfig

    assert TrialConfig.from_json(trials[0].to_json()) == trials[0]  # survives the trip to the worker
