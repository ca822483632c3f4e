"""Shared pytest setup: tests marked `cuda` skip cleanly on machines without a GPU, where the
Triton kernels run in the Triton interpreter instead."""
import os

import pytest
import torch
from _signal_guard import stop_signals_reach_the_suite  # noqa: F401  (autouse: Ctrl-C always stops pytest)

# Triton reads this when a kernel is defined, and fsfm_fast defines its kernels on first use,
# so setting it here, before any test runs, is early enough.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_sessionstart(session):
    # A build that left fsfm_fast._C out must fail the suite, not quietly test the reference ops.
    from fsfm_fast import _ext
    if not _ext.has_extension() and os.environ.get("FSFM_ALLOW_NO_EXTENSION") != "1":
        pytest.exit(f"{_ext.unavailable_reason()}; fix the build, or set FSFM_ALLOW_NO_EXTENSION=1 to test "
                    "without it", returncode=1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
