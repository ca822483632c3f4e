"""Shared pytest setup: tests marked `cuda` skip cleanly on machines without a GPU, where the
Triton kernels run in the Triton interpreter instead."""
import os

import pytest
import torch

# Triton reads this when a kernel is defined, and fsfm_fast defines its kernels on first use,
# so setting it here, before any test runs, is early enough.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
