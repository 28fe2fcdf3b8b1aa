"""Token data for language-model trials, through Hugging Face ``datasets``.

Sources (``DataSpec.source``):
- ``stdlib``: the ``.py`` files of the running Python's standard library, read at run time
  with ``load_dataset("text", sample_by="document")``: real text on every machine, no
  download. (Different Python versions ship different files: keep one version per cluster.)
- ``synthetic``: a seeded first-order Markov chain whose entropy rate is known in closed form
  (:func:`markov_entropy_rate`), so the irreducible loss E of a sweep is known exactly.
- ``files``: local ``.txt`` (one document per file), ``.jsonl`` or ``.parquet`` (one
  document per row, column ``text_field``).
- ``hub``: any Hugging Face dataset name, streamed (needs network; fails clearly offline).

Split: every document goes to validation when a seeded hash of its index falls under
``validation_fraction``, to training otherwise, so the split is fixed, identical on every
worker, and works for streamed data too. Validation documents are never trained on.
Tokenization: bytes of the UTF-8 text (vocabulary 256) by default, or a Hugging Face
tokenizer (``hf:<name or local path>``, needs ``transformers``).
Batches: the training documents are concatenated into one stream in split order and cut
into consecutive windows of ``seq_len + 1`` tokens; step s uses windows s·B … s·B+B−1
(wrapping around when a budget exceeds the stream), so smaller budgets train on a prefix
of what larger ones see, and worker r of W takes rows r, r+W, … of each global batch.
"""

from __future__ import annotations

import hashlib
import math
import os
import sysconfig
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np

from analysis.errors import UserError
from experiments.spec import DataSpec, Source, SyntheticSpec
from experiments.yamlio import FieldError

TEXT_BUILDERS = {".txt": "text", ".py": "text", ".md": "text", ".jsonl": "json", ".json": "json",
                 ".parquet": "parquet"}  # file suffix -> datasets builder


@dataclass(frozen=True)
class TokenData:
    train: np.ndarray  # int64 token stream of the training documents
    validation: np.ndarray  # int64 token stream of the validation documents
    vocab: int
    entropy_rate: float | None  # nats/token of the source, when known in closed form
    bytes_per_token: float = math.nan  # UTF-8 bytes of the validation text per token (NaN: synthetic tokens)


def _shared(data: TokenData) -> TokenData:
    """``data`` made read-only: the process's cache hands it to every later trial."""
    data.train.flags.writeable = data.validation.flags.writeable = False
    return data


def vocab_size(spec: DataSpec) -> int:
    if spec.source == Source.SYNTHETIC:
        return spec.synthetic.vocab
    if spec.tokenizer == "byte":
        return 256
    return len(_hf_tokenizer(spec.tokenizer[3:]))


def load_tokens(spec: DataSpec, *, train_tokens: int, validation_tokens: int) -> TokenData:
    """Read documents until the training stream has ``train_tokens`` tokens (or the source
    is exhausted: trials then wrap around) and validation has ``validation_tokens``. Kept
    per process (read-only arrays), for the next trials of a reused process: a sweep's
    seeds, sizes, learning rates and smaller budgets read their data once."""
    if spec.source == Source.SYNTHETIC:
        return _synthetic_tokens(spec.synthetic, spec.validation_fraction)
    return _read_tokens(spec, train_tokens, validation_tokens)


@dataclass(frozen=True)
class _Read:
    """One read of a source: its data, where each training document ends in the stream, and
    whether the source ran out before the training stream was full."""

    data: TokenData
    ends: np.ndarray
    exhausted: bool

    def covers(self, train_tokens: int) -> bool:
        return self.exhausted or (len(self.ends) > 0 and self.ends[-1] >= train_tokens)

    def take(self, train_tokens: int) -> TokenData:
        """What a read of ``train_tokens`` gives: the training stream up to the end of the
        document that fills it (the validation stream does not depend on it)."""
        k = int(np.searchsorted(self.ends, train_tokens))
        return self.data if k >= len(self.ends) else replace(self.data, train=self.data.train[: self.ends[k]])


_READS: dict[tuple[DataSpec, int], _Read] = {}  # per process: (source, validation size) -> longest read


def _read_tokens(spec: DataSpec, train_tokens: int, validation_tokens: int) -> TokenData:
    """Training data from the process's longest read of the source when it holds enough (the
    budgets of a ladder take prefixes of one read), else from a new read."""
    key = (spec, validation_tokens)
    read = _READS.get(key)
    if read is None or not read.covers(train_tokens):
        read = _READS[key] = _read(spec, train_tokens, validation_tokens)
        while len(_READS) > 2:  # a sweep has one source: older ones are not needed again
            del _READS[next(iter(_READS))]
    return read.take(train_tokens)


def _read(spec: DataSpec, train_tokens: int, validation_tokens: int) -> _Read:
    encode = _encoder(spec.tokenizer)
    train: list[np.ndarray] = []
    val: list[np.ndarray] = []
    n_train = n_val = val_bytes = 0
    exhausted = True
    for index, text in enumerate(_documents(spec)):
        if not text:
            continue
        ids = encode(text)
        if _is_validation(index, spec.validation_fraction):
            if n_val < validation_tokens:
                val.append(ids)
                n_val += len(ids)
                val_bytes += len(text.encode("utf-8"))
        elif n_train < train_tokens:
            train.append(ids)
            n_train += len(ids)
        if n_train >= train_tokens and n_val >= validation_tokens:
            exhausted = False
            break
    if not train or not val:
        raise UserError(
            f"data: source {spec.source!r} gave {n_train} training and {n_val} validation "
            "tokens; it needs documents in both splits (more data, or another "
            "validation_fraction)"
        )
    data = TokenData(np.concatenate(train), np.concatenate(val), vocab_size(spec), None, val_bytes / n_val)
    return _Read(_shared(data), np.cumsum([len(ids) for ids in train]), exhausted)


def _is_validation(index: int, fraction: float) -> bool:
    digest = hashlib.blake2b(index.to_bytes(8, "little"), digest_size=8, key=b"scalinglab")
    return int.from_bytes(digest.digest(), "little") / 2**64 < fraction


def _documents(spec: DataSpec) -> Iterator[str]:
    """Texts of the source's documents, in a fixed order."""
    import datasets

    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_error()
    if spec.source == Source.HUB:
        yield from _hub_documents(spec)
        return
    files = stdlib_files() if spec.source == Source.STDLIB else [Path(p) for p in spec.paths]
    budget = spec.max_bytes
    for builder, group in _group_by_builder(files):
        kwargs = {"sample_by": "document"} if builder == "text" else {}
        if spec.source == Source.STDLIB:
            kwargs["encoding_errors"] = "replace"  # a few stdlib test files are Latin-1
        try:
            ds = datasets.load_dataset(
                builder, data_files=[str(f) for f in group], split="train", **kwargs
            )
        except Exception as exc:  # datasets raises many types for unreadable files
            raise UserError(f"data.paths: cannot read {builder} files {group[:3]}: {exc}") from None
        field = "text" if builder == "text" else spec.text_field
        if field not in ds.column_names:
            raise UserError(
                f"data.text_field: column {field!r} not in {group[0]} (columns: {ds.column_names})"
            )
        for text in ds[field]:
            yield text
            budget -= len(text)
            if budget <= 0:
                return


def check_token_data(spec: DataSpec) -> None:
    """Before launch: every file of a ``files`` source exists, has a known suffix, and a JSONL
    or Parquet file has the ``text_field`` column (its schema or first line, not its data)."""
    if spec.source != Source.FILES:
        return
    for i, name in enumerate(spec.paths):
        path = Path(name)
        if not path.is_file():
            raise FieldError(("paths", i), f"file not found: {name}")
        builder = TEXT_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise FieldError(("paths", i), f"cannot read {name}: expected .txt, .jsonl or .parquet")
        if builder != "text":
            check_column(path, builder, spec.text_field, ("text_field",))


def check_column(path: Path, builder: str, column: str, field: tuple) -> None:
    """Before launch: a table file (``datasets`` builder ``parquet``, ``arrow`` or ``json``)
    has ``column`` (read from its schema or first line, not its data)."""
    columns = table_columns(path, builder)
    if column not in columns:
        raise FieldError(field, f"column {column!r} not in {path} (columns: {sorted(columns)})")


def table_columns(path: Path, builder: str) -> set[str]:
    """The column names of a Parquet or Arrow file (its schema), or of a JSONL file (its first
    row)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    if builder == "parquet":
        return set(pq.read_schema(path).names)
    if builder == "arrow":
        with pa.memory_map(str(path)) as source:  # datasets writes Arrow files as IPC streams
            try:
                return set(pa.ipc.open_stream(source).schema.names)
            except pa.ArrowInvalid:
                return set(pa.ipc.open_file(source).schema.names)
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                try:
                    row = json.loads(line)
                except ValueError:
                    raise FieldError(("paths",), f"{path}: the first line is not JSON") from None
                return set(row) if isinstance(row, dict) else set()
    return set()


def _group_by_builder(files: list[Path]) -> Iterator[tuple[str, list[Path]]]:
    groups: dict[str, list[Path]] = {}
    for f in files:
        if not f.is_file():
            raise UserError(f"data.paths: file not found: {f}")
        kind = TEXT_BUILDERS.get(f.suffix.lower())
        if kind is None:
            raise UserError(
                f"data.paths: cannot read {f}: expected .txt, .jsonl or .parquet"
            )
        groups.setdefault(kind, []).append(f)
    return iter(groups.items())


def _hub_documents(spec: DataSpec) -> Iterator[str]:
    import datasets

    try:
        ds = datasets.load_dataset(spec.name, spec.config, split=spec.split, streaming=True)
        for row in ds:
            yield row[spec.text_field]
    except KeyError:
        raise UserError(f"data.text_field: {spec.text_field!r} is not a column of {spec.name}") from None
    except Exception as exc:  # offline, unknown name, gated: all look alike from here
        raise hub_error(spec, exc, Source.FILES) from None


def hub_error(spec: DataSpec, exc: Exception, local_source: Source) -> UserError:
    """The error for a hub dataset that cannot be streamed, pointing at the local alternative."""
    return UserError(
        f"data.name: cannot stream hub dataset {spec.name!r} ({type(exc).__name__}: "
        f"{str(exc)[:200]}); this needs network access to the Hugging Face hub, "
        f"or use source: {local_source.value} with a local copy"
    )


@lru_cache(maxsize=1)
def stdlib_files() -> list[Path]:
    """The standard library's .py files (not site-packages), sorted: the offline default."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for folder, subfolders, names in os.walk(root):  # 12x faster than Path.rglob here (0.035 s)
        subfolders[:] = [d for d in subfolders if d not in ("site-packages", "dist-packages")]
        files += [Path(folder) / name for name in names if name.endswith(".py")]
    files.sort()
    if not files:
        raise UserError(f"data: no .py files under the standard library at {root}")
    return files


def _encoder(tokenizer: str):
    if tokenizer == "byte":
        return lambda text: np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)
    tok = _hf_tokenizer(tokenizer[3:])
    return lambda text: np.asarray(tok(text)["input_ids"], dtype=np.int64)


@lru_cache(maxsize=4)
def _hf_tokenizer(name: str):
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise UserError(
            "data.tokenizer: a Hugging Face tokenizer needs the transformers package "
            "(pip install transformers), or use tokenizer: byte"
        ) from None
    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as exc:
        raise UserError(
            f"data.tokenizer: cannot load tokenizer {name!r} ({type(exc).__name__}); give a "
            "local directory or a name available offline"
        ) from None


# --- synthetic Markov source -------------------------------------------------------------

def markov_chain(spec: SyntheticSpec) -> tuple[np.ndarray, np.ndarray]:
    """(transition matrix P[i, j] = p(next=j | current=i), stationary distribution π)."""
    rng = np.random.default_rng(spec.seed)
    p = rng.dirichlet(np.full(spec.vocab, spec.concentration), size=spec.vocab)
    p = np.maximum(p, 1e-12)  # keep every transition possible: finite log-losses
    p /= p.sum(axis=1, keepdims=True)
    evals, evecs = np.linalg.eig(p.T)
    pi = np.real(evecs[:, np.argmin(np.abs(evals - 1))])
    return p, pi / pi.sum()


def markov_entropy_rate(spec: SyntheticSpec) -> float:
    """H = −Σ_i π_i Σ_j P_ij log P_ij, in nats/token: the lowest achievable expected loss of
    a next-token predictor on a stationary stream of this chain."""
    p, pi = markov_chain(spec)
    return float(-(pi[:, None] * p * np.log(p)).sum())


@lru_cache(maxsize=2)
def _synthetic_tokens(spec: SyntheticSpec, validation_fraction: float) -> TokenData:
    import datasets

    p, pi = markov_chain(spec)
    rng = np.random.default_rng(spec.seed + 1)
    length = spec.train_tokens // spec.documents + 1
    cdf = np.cumsum(p, axis=1)
    docs = np.empty((spec.documents, length), dtype=np.int64)
    state = rng.choice(spec.vocab, size=spec.documents, p=pi)  # start in stationarity
    u = rng.random((length, spec.documents))
    for t in range(length):
        docs[:, t] = state
        state = np.minimum((cdf[state] < u[t, :, None]).sum(axis=1), spec.vocab - 1)
    ds = datasets.Dataset.from_dict({"ids": list(docs)})
    is_val = [_is_validation(i, validation_fraction) for i in range(len(ds))]
    if all(is_val) or not any(is_val):
        is_val[0], is_val[1] = True, False
    split = ds.add_column("validation", is_val)
    train = split.filter(lambda r: not r["validation"]).with_format("numpy")["ids"]
    val = split.filter(lambda r: r["validation"]).with_format("numpy")["ids"]
    return _shared(TokenData(np.concatenate(list(train)), np.concatenate(list(val)), spec.vocab,
                             markov_entropy_rate(spec)))


# --- batching ----------------------------------------------------------------------------

def train_batch(stream: np.ndarray, step: int, batch_size: int, seq_len: int,
                rank: int = 0, world: int = 1) -> np.ndarray:
    """Rows ``rank::world`` of global batch ``step``: shape [batch_size/world, seq_len+1]."""
    windows = (len(stream) - 1) // seq_len
    if windows < 1:
        raise UserError(f"data: the training stream ({len(stream)} tokens) is shorter than one sequence")
    rows = (step * batch_size + np.arange(rank, batch_size, world)) % windows
    starts = rows[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    return stream[starts]


def validation_batches(stream: np.ndarray, n_tokens: int, seq_len: int, batch_size: int,
                       rank: int = 0, world: int = 1) -> list[np.ndarray]:
    """This worker's share of the fixed validation set: ``n_tokens // seq_len`` windows,
    trimmed to a multiple of ``world`` so every worker scores the same number of tokens."""
    n = min(n_tokens // seq_len, (len(stream) - 1) // seq_len)
    n -= n % world
    if n < world:
        raise UserError(
            f"evaluation.validation_tokens: the validation split has only {len(stream)} tokens, "
            f"fewer than {world} sequence(s) of {seq_len}; raise data.validation_fraction"
        )
    rows = np.arange(rank, n, world)
    starts = rows[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    windows = stream[starts]
    return [windows[i : i + batch_size] for i in range(0, len(windows), batch_size)]

