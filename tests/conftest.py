"""Shared fixtures: spec files written on the fly, and the environment every test runs in."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# DeepSpeed picks its CPU accelerator without probing for GPUs; Ray's embedded cluster
# needs no auth token; Hugging Face libraries stay offline (tests never touch a hub).
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture
def write_spec(tmp_path):
    """Write a YAML spec (dedented) to a temporary file and return its path."""

    def write(text: str, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


MINIMAL_SPEC = """\
name: tiny
model:
  sizes:
    - {d_model: 16, n_layers: 1, n_heads: 1}
    - {d_model: 32, n_layers: 1, n_heads: 2}
budgets:
  tokens: [4096, 8192]
training: {batch_size: 4, seq_len: 32}
evaluation: {validation_tokens: 1024, points: 3}
"""
