"""Fixtures of the host-free core tests: the repo root on sys.path, synthetic adapter files."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture(scope="session")
def adapter_file(tmp_path_factory):
    """`adapter_file(name, seed=0)` -> path of a synthetic fp16 file in the published layout,
    written once per session (several test modules share the SD1.5 files).

    Tests must not modify these files; copy them first (see test_checkpoint_safety)."""
    from ip_adapter_core.testing import write_adapter

    root = tmp_path_factory.mktemp("synthetic-adapters")
    cache: dict[tuple[str, int], str] = {}

    def get(file_name: str, seed: int = 0) -> str:
        if (file_name, seed) not in cache:
            cache[(file_name, seed)] = write_adapter(root / f"seed{seed}", file_name, seed=seed)
        return cache[(file_name, seed)]

    return get


@pytest.fixture(scope="module")
def one_thread():
    """Run a module on one intra-op thread.

    For models made of many small ops (tiny UNets, single attention layers) a second thread
    gains nothing, and on a busy 2-core machine waking it costs a scheduler slice per op
    (a tiny-UNet forward goes from ~0.1 s to several seconds)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
