"""The start-up self-check: a planted broken kernel is caught, reported and replaced by the reference."""
from __future__ import annotations

import os
import warnings

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from fsfm_fast import _ext, ops  # noqa: E402
from fsfm_fast.ops import _checks, reference  # noqa: E402

requires_ext = pytest.mark.skipif(not _ext.has_extension(), reason="the compiled extension is not built")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def no_fallbacks(monkeypatch):
    monkeypatch.setattr(_checks, "FALLBACKS", {})  # each test starts trusting every kernel


def test_healthy_kernels_pass(capsys):
    outcome = ops.selfcheck(DEVICE)
    assert outcome["checks"] and all(c["ok"] for c in outcome["checks"]) and outcome["fallbacks"] == {}
    assert capsys.readouterr().out == ""


@requires_ext
def test_a_broken_compiled_op_falls_back_to_the_reference(monkeypatch):
    real = torch.ops.fsfm_fast.crfrp_mask

    def garbage(parsing, *args):  # hides one patch too many in the first image
        img, fr = real(parsing, *args)
        img = img.clone()
        img[0] = True
        return img, fr

    monkeypatch.setattr(torch.ops.fsfm_fast, "crfrp_mask", garbage)
    lines = []
    outcome = ops.selfcheck(DEVICE, log=lines.append)
    assert [c["op"] for c in outcome["checks"] if not c["ok"]] == ["crfrp_mask"]
    assert len(lines) == 1 and "crfrp_mask" in lines[0] and "FAILED" in lines[0] and "report" in lines[0]
    assert outcome["in_use"]["crfrp_mask"] == "torch" and ops.backends_in_use(DEVICE)["crfrp_mask"] == "torch"
    parsing = torch.randint(0, 11, (2, 32, 32), dtype=torch.uint8, device=DEVICE)
    img, fr = ops.crfrp_mask(parsing, 16, seed=3)  # "auto" now runs the reference: exact counts again
    assert (img.sum(1) == reference.num_masked(0.75, 4)).all()


@requires_ext
def test_a_raising_kernel_is_caught_too(monkeypatch):
    def crash(*args):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(torch.ops.fsfm_fast, "region_presence", crash)
    outcome = ops.selfcheck(DEVICE, log=lambda line: None)
    failed = {c["op"]: c["detail"] for c in outcome["checks"] if not c["ok"]}
    assert list(failed) == ["region_presence"] and "illegal memory access" in failed["region_presence"]


def test_a_broken_triton_kernel_is_an_error_under_ops_triton(monkeypatch):
    pytest.importorskip("triton")
    from fsfm_fast.ops import triton_restore

    real = triton_restore.restore_forward
    monkeypatch.setattr(triton_restore, "restore_forward", lambda *a: real(*a) * 1.01)
    with pytest.raises(ops.SelfCheckError, match=r"restore_masked \(triton on .*\) FAILED: max relative difference"):
        ops.selfcheck(DEVICE, "triton", dim=32)
    assert "restore_masked" not in _checks.FALLBACKS  # an error, not a silent fallback


def test_cpu_only_build_on_a_gpu_warns_loudly_once(monkeypatch):
    monkeypatch.setattr(_ext, "has_extension", lambda: True)
    monkeypatch.setattr(_ext, "cuda_built", lambda: False)
    monkeypatch.setattr(_ext, "_WARNED_CPU_ONLY", False)
    cuda = torch.device("cuda", 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _ext.choose_backend("crfrp_mask", "auto", cuda) == "torch"
        assert _ext.choose_backend("region_presence", "auto", cuda) == "torch"
    assert len(caught) == 1 and "without CUDA kernels" in str(caught[0].message)
