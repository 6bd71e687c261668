from __future__ import annotations

import pytest
import torch


@pytest.fixture
def generator() -> torch.Generator:
    """A seeded generator, so every random case is the same on every run."""
    return torch.Generator().manual_seed(1234)
