"""Capability probes for language models: small tasks mixed into training, scored on held-out
items at every evaluation point.

Tasks (byte-level text, one item per line, the answer after ``=``):
- ``addition``: ``"47+385=432\\n"``, operands of up to ``digits`` digits;
- ``modular``: ``"47+85%97=35\\n"``, (a + b) mod ``modulus``;
- ``recall``: in-context associative recall, ``"k:7,c:2,x:9|c=2\\n"``, ``pairs`` key–value
  pairs (distinct letter keys, digit values), then one key to look up;
- ``walk``: ``"tce=b" + "r2cpz8ByWfFKID7a\\n"``, ``steps`` steps along a fixed random
  permutation of the 62 letters and digits (seeded by ``seed``; the same in training and
  held-out items), starting from the symbol after ``=``. The three symbols before ``=`` are a
  random tag that makes items distinct. Each answer symbol is a lookup of the one before it, a
  table the model learns entry by entry; the closing newline needs the walk's length counted.

Held-out items are drawn from their own seeded stream and are never trained on: the training
generator redraws any item whose text is a held-out one. With ``mix_rate`` r, each training
sequence is, with probability r (decided by a seeded hash of its step and row, so the same
on every worker and across restarts), replaced by a sequence of newline-separated probe
items of every task, cut to the sequence length. D still counts every token trained.

Metrics per task, all teacher-forced on the held-out items in one forward pass:
- ``exact_match``: every answer token (and the closing newline) is the model's argmax, i.e.
  greedy decoding would produce the answer exactly (discontinuous);
- ``logprob``: mean log-probability per answer token of the correct answer, nats (continuous);
- ``token_accuracy``: the fraction of answer tokens that are the argmax given the correct
  prefix, partial credit (continuous).
They land in evals.parquet as ``TASK/METRIC`` rows, which the emergence detector and the
report's emergence panel read, each with its standard error over the items as a
``TASK/METRIC_stderr`` row (binomial, smoothed, for exact match) and its chance level as a
``TASK/METRIC_chance`` row: what a uniform guess over the task's answer alphabet
(``ANSWER_ALPHABETS``, the closing newline included) scores, i.e. 1/|alphabet| for token
accuracy, −ln |alphabet| for the log-prob, and the mean of |alphabet|^−ℓ over the items for
exact match (ℓ: an item's answer tokens). ``TASK/answer_tokens`` is the mean ℓ, the exponent of
the detector's mirage check (token_accuracy^ℓ against exact match).
"""

from __future__ import annotations

import hashlib
import math
import string
from dataclasses import dataclass
from functools import lru_cache
from typing import get_args

import numpy as np
import torch
import torch.nn.functional as F

from analysis.records import ANSWER_TOKENS, ProbeMetric, capability_metric, chance_of, stderr_of
from experiments.spec import ProbeSpec, ProbeTask

TASKS = get_args(ProbeTask)
SYMBOLS = string.ascii_lowercase + string.ascii_uppercase + string.digits  # walk's alphabet
# the symbols an answer is made of, its closing newline included: what chance guesses among
ANSWER_ALPHABETS = {"addition": string.digits + "\n", "modular": string.digits + "\n",
                    "recall": string.digits + "\n", "walk": SYMBOLS + "\n"}


def make_item(task: str, rng: np.random.Generator, spec: ProbeSpec) -> tuple[str, str]:
    """(prompt, answer ending in a newline) of one random item; the prompt ends in '=' (walk: in '='
    and the start symbol)."""
    if task == "addition":
        top = 10**spec.digits
        a, b = (int(v) for v in rng.integers(0, top, 2))
        return f"{a}+{b}=", f"{a + b}\n"
    if task == "modular":
        a, b = (int(v) for v in rng.integers(0, spec.modulus, 2))
        return f"{a}+{b}%{spec.modulus}=", f"{(a + b) % spec.modulus}\n"
    if task == "recall":
        keys = rng.choice(list(string.ascii_lowercase), size=spec.pairs, replace=False)
        values = rng.integers(0, 10, spec.pairs)
        query = int(rng.integers(0, spec.pairs))
        context = ",".join(f"{k}:{v}" for k, v in zip(keys, values))
        return f"{context}|{keys[query]}=", f"{values[query]}\n"
    if task == "walk":
        step = _walk_table(spec.seed)
        tag = "".join(SYMBOLS[i] for i in rng.integers(0, len(SYMBOLS), 3))
        start = here = int(rng.integers(0, len(SYMBOLS)))
        path = []
        for _ in range(spec.steps):
            here = int(step[here])
            path.append(SYMBOLS[here])
        return f"{tag}={SYMBOLS[start]}", "".join(path) + "\n"
    raise ValueError(f"unknown probe task {task!r}; expected one of {TASKS}")


@lru_cache(maxsize=8)
def _walk_table(seed: int) -> np.ndarray:
    """walk's successor table: a seeded random permutation of the symbol indices."""
    return np.random.default_rng([seed, 3]).permutation(len(SYMBOLS))


@lru_cache(maxsize=8)
def held_out(spec: ProbeSpec) -> dict[str, list[tuple[str, str]]]:
    """The fixed held-out items of every task (distinct items, seeded)."""
    out = {}
    for t, task in enumerate(spec.tasks):
        rng = np.random.default_rng([spec.seed, 1, t])
        items: dict[str, str] = {}
        for _ in range(100 * spec.eval_items):
            prompt, answer = make_item(task, rng, spec)
            items.setdefault(prompt, answer)
            if len(items) == spec.eval_items:
                break
        out[task] = list(items.items())
    return out


@lru_cache(maxsize=8)
def _held_out_prompts(spec: ProbeSpec) -> frozenset[str]:
    return frozenset(p for items in held_out(spec).values() for p, _ in items)


def training_text(spec: ProbeSpec, rng: np.random.Generator, n_bytes: int) -> bytes:
    """At least ``n_bytes`` of newline-separated training items, tasks in turn, none held out."""
    forbidden = _held_out_prompts(spec)
    parts, size, t = [], 0, int(rng.integers(0, len(spec.tasks)))
    while size < n_bytes:
        task = spec.tasks[t % len(spec.tasks)]
        t += 1
        prompt, answer = make_item(task, rng, spec)
        while prompt in forbidden:
            prompt, answer = make_item(task, rng, spec)
        parts.append(prompt + answer)
        size += len(parts[-1])
    return "".join(parts).encode()


def _unit(seed: int, step: int, row: int) -> float:
    digest = hashlib.blake2b(f"{seed}:{step}:{row}".encode(), digest_size=8, key=b"probes").digest()
    return int.from_bytes(digest, "little") / 2**64


def mix_into(batch: np.ndarray, spec: ProbeSpec, step: int, batch_size: int, rank: int, world: int) -> np.ndarray:
    """``batch`` (this worker's rows ``rank::world`` of global batch ``step``) with the rows
    chosen for probes replaced by probe text (see the module docstring)."""
    if spec.mix_rate <= 0:
        return batch
    out = batch.copy()
    width = batch.shape[1]
    for i, row in enumerate(range(rank, batch_size, world)):
        if _unit(spec.seed, step, row) < spec.mix_rate:
            rng = np.random.default_rng([spec.seed, 2, step, row])
            text = training_text(spec, rng, width + 64)
            start = int(rng.integers(0, 32))  # sequences start anywhere in the item stream
            out[i] = np.frombuffer(text[start: start + width], dtype=np.uint8).astype(np.int64)
    return out


@dataclass
class _Encoded:
    tokens: torch.Tensor  # [n, L] prompt + answer, right-padded
    answer_mask: torch.Tensor  # [n, L-1] True where the target is an answer token


@lru_cache(maxsize=16)
def _encoded(spec: ProbeSpec, task: str, context: int) -> _Encoded:
    items = held_out(spec)[task]
    texts = [(p + a).encode() for p, a in items]
    length = max(len(t) for t in texts)
    if length > context:
        raise ValueError(f"probe items of {task!r} are {length} bytes, longer than the context {context}")
    tokens = torch.zeros((len(texts), length), dtype=torch.long)
    mask = torch.zeros((len(texts), length - 1), dtype=torch.bool)
    for i, ((prompt, _), text) in enumerate(zip(items, texts)):
        tokens[i, : len(text)] = torch.tensor(list(text))
        mask[i, len(prompt.encode()) - 1: len(text) - 1] = True  # targets = answer bytes
    return _Encoded(tokens, mask)


@torch.no_grad()
def evaluate_probes(logits_of, spec: ProbeSpec, context: int, device, batch_size: int = 256) -> dict[str, float]:
    """``TASK/exact_match``, ``TASK/logprob`` and ``TASK/token_accuracy`` on the held-out items;
    ``logits_of(tokens)`` gives next-token logits [B, T, V] for token ids [B, T]."""
    metrics = {}
    for task in spec.tasks:
        enc = _encoded(spec, task, context)
        exact, logprob, accuracy, weights = [], [], [], []
        for start in range(0, len(enc.tokens), batch_size):
            tokens = enc.tokens[start: start + batch_size].to(device)
            mask = enc.answer_mask[start: start + batch_size].to(device)
            logits = logits_of(tokens[:, :-1]).float()
            target = tokens[:, 1:]
            tok_logp = F.log_softmax(logits, dim=-1).gather(-1, target[..., None])[..., 0]
            right = logits.argmax(-1) == target
            count = mask.sum(dim=1)
            exact.append((right | ~mask).all(dim=1).double().cpu())
            logprob.append(((tok_logp * mask).sum(dim=1) / count).double().cpu())
            accuracy.append(((right & mask).sum(dim=1) / count).double().cpu())
            weights.append(count.double().cpu())
        w = torch.cat(weights)
        for name, per_item in ((ProbeMetric.EXACT_MATCH, torch.cat(exact)), (ProbeMetric.LOGPROB, torch.cat(logprob)),
                               (ProbeMetric.TOKEN_ACCURACY, torch.cat(accuracy))):
            # token-weighted means (exact match: per item), and the standard error of the mean
            # over items, which the emergence detector uses (TASK/NAME_stderr)
            weight = torch.ones_like(w) if name is ProbeMetric.EXACT_MATCH else w
            mean = float((per_item * weight).sum() / weight.sum())
            n = len(per_item)
            if name is ProbeMetric.EXACT_MATCH:  # binomial, p smoothed so that 0% and 100% keep an error
                p_s = (mean * n + 0.5) / (n + 1)
                stderr = (p_s * (1 - p_s) / n) ** 0.5
            else:
                stderr = float(per_item.std(unbiased=True)) / n**0.5 if n > 1 else float("nan")
            metrics[capability_metric(task, name)] = mean
            metrics[stderr_of(capability_metric(task, name))] = stderr
        metrics.update(chance_levels(task, enc.answer_mask.sum(dim=1).double()))
    return metrics


def chance_levels(task: str, answer_tokens: torch.Tensor) -> dict[str, float]:
    """``TASK/NAME_chance`` of each metric and ``TASK/answer_tokens``, for items whose answers
    have ``answer_tokens`` tokens each (module docstring)."""
    size = len(ANSWER_ALPHABETS[task])
    exact = float(torch.mean(torch.pow(torch.tensor(float(size)), -answer_tokens)))
    return {chance_of(capability_metric(task, ProbeMetric.EXACT_MATCH)): exact,
            chance_of(capability_metric(task, ProbeMetric.LOGPROB)): -math.log(size),
            chance_of(capability_metric(task, ProbeMetric.TOKEN_ACCURACY)): 1.0 / size,
            capability_metric(task, ANSWER_TOKENS): float(answer_tokens.mean())}
