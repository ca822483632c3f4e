"""The compiled extension fsfm_fast._C and the region_presence op built on it."""
from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from _no_extension import BLOCK_EXTENSION
from fsfm_fast import _ext
from fsfm_fast.ops import reference
from fsfm_fast.ops import region_presence

rp_module = importlib.import_module("fsfm_fast.ops.region_presence")
ROOT = Path(__file__).resolve().parents[1]

requires_ext = pytest.mark.skipif(
    not _ext.has_extension(),
    reason=f"extension not built ({_ext.unavailable_reason()}); "
           "run `pip install --no-build-isolation -e .`",
)


def random_parsing(batch, height, width, seed=0):
    """Mostly skin with sparse random labels, so per-patch masks differ."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 11, (batch, height, width), generator=g, dtype=torch.uint8)
    sparse = torch.rand(batch, height, width, generator=g) < 0.05
    return torch.where(sparse, labels, torch.ones_like(labels))


def hand_map():
    """32x48, patch 16 (2x3 patches), labels on patch edges; the same map as tests/cpp."""
    x = torch.zeros(1, 32, 48, dtype=torch.uint8)
    x[0, 0:16, 0:32] = 1
    x[0, 15, 31] = 2
    x[0, 0:16, 32:48] = 10
    x[0, 0, 32] = 0
    x[0, 16:32, 16:32] = 1
    x[0, 16, 16] = 4
    x[0, 31, 31] = 5
    x[0, 16:32, 32:40] = 6
    x[0, 16:21, 40:48] = 7
    x[0, 21:27, 40:48] = 8
    x[0, 27:32, 40:48] = 9
    expected = torch.tensor([[2, 2 | 4, 1 | 1024, 1, 2 | 16 | 32, 64 | 128 | 256 | 512]],
                            dtype=torch.int16)
    return x, expected


# ------------------------------------------------------------------ build


def test_extension_present_when_required():
    if os.environ.get("FSFM_REQUIRE_EXT") != "1":
        pytest.skip("FSFM_REQUIRE_EXT=1 not set (CI sets it after building the extension)")
    assert _ext.has_extension(), _ext.unavailable_reason()


@requires_ext
def test_build_info_and_registration():
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?\S*", _ext.C.version)
    assert isinstance(_ext.C.cuda_built(), bool)
    if _ext.cuda_built():
        # nvcc may differ from torch's CUDA in the minor version, never the major one.
        assert _ext.C.cuda_version.split(".")[0] == torch.version.cuda.split(".")[0]
    else:
        assert _ext.C.cuda_version is None
    schema = str(torch.ops.fsfm_fast.region_presence.default._schema)
    assert schema == "fsfm_fast::region_presence(Tensor parsing, int patch_size) -> Tensor"


# ------------------------------------------------------------------ CPU kernel


@requires_ext
@pytest.mark.parametrize("shape, patch", [
    ((4, 224, 224), 16), ((3, 224, 224), 14), ((2, 64, 64), 8), ((2, 32, 48), 16),
    ((1, 224, 224), 16), ((2, 30, 45), 15), ((2, 12, 18), 1), ((1, 40, 40), 40),
])
def test_cpu_matches_reference(shape, patch):
    x = random_parsing(*shape, seed=patch)
    want = reference.region_presence(x, patch)
    got = region_presence(x, patch, backend="cpu")
    assert got.dtype == torch.int16 and got.shape == want.shape
    assert torch.equal(got, want)
    assert torch.equal(region_presence(x, patch), want)  # auto picks the same op


@requires_ext
def test_cpu_hand_computed_masks():
    x, expected = hand_map()
    assert torch.equal(region_presence(x, 16, backend="cpu"), expected)
    every = torch.zeros(1, 16, 16, dtype=torch.uint8)
    for k in range(1, 11):
        every[0, (k // 4) * 4 + k % 4, (k % 4) * 4 + (k * 3) % 4] = k
    assert region_presence(every, 16, backend="cpu").tolist() == [[2047]]
    per_patch = region_presence(every, 4, backend="cpu")[0].tolist()
    assert per_patch == [1 | (1 << k) if k <= 10 else 1 for k in range(16)]


@requires_ext
def test_cpu_all_background_and_empty_batch():
    assert torch.equal(region_presence(torch.zeros(3, 64, 64, dtype=torch.uint8), 16,
                                       backend="cpu"),
                       torch.ones(3, 16, dtype=torch.int16))
    empty = region_presence(torch.zeros(0, 32, 32, dtype=torch.uint8), 16, backend="cpu")
    assert empty.shape == (0, 4) and empty.dtype == torch.int16


@requires_ext
def test_cpu_non_contiguous_input():
    x = random_parsing(2, 48, 32, seed=3).transpose(1, 2)
    assert not x.is_contiguous()
    assert torch.equal(region_presence(x, 16, backend="cpu"),
                       reference.region_presence(x.contiguous(), 16))


# ------------------------------------------------------------------ errors

BAD_INPUTS = [
    (torch.full((1, 16, 16), 11, dtype=torch.uint8), 16, ValueError, r"label.* 11"),
    (torch.zeros(1, 16, 16, dtype=torch.int64), 16, TypeError, r"parsing.*uint8"),
    (torch.zeros(1, 30, 32, dtype=torch.uint8), 16, ValueError, r"divisible|divide"),
    (torch.zeros(16, 16, dtype=torch.uint8), 16, ValueError, r"parsing.*(3-D|3 dims)"),
]


@pytest.mark.parametrize("backend", ["auto", "torch",
                                     pytest.param("cpu", marks=requires_ext)])
@pytest.mark.parametrize("x, patch, error, message", BAD_INPUTS)
def test_bad_inputs_raise_named_errors(backend, x, patch, error, message):
    with pytest.raises(error, match=message):
        region_presence(x, patch, backend=backend)


@requires_ext
@pytest.mark.parametrize("x, patch, error, message", BAD_INPUTS + [
    (torch.zeros(1, 16, 16, dtype=torch.uint8), 0, ValueError, r"patch_size must be positive"),
])
def test_compiled_op_checks_its_inputs(x, patch, error, message):
    # The C++ checks themselves, without the Python ones in front.
    with pytest.raises(error, match=message):
        torch.ops.fsfm_fast.region_presence(x, patch)


def test_backend_errors():
    x = torch.zeros(1, 16, 16, dtype=torch.uint8)
    with pytest.raises(ValueError, match="backend"):
        region_presence(x, 16, backend="triton")
    if not _ext.cuda_built():
        with pytest.raises(RuntimeError, match="without CUDA|compiled extension"):
            region_presence(x, 16, backend="cuda")
    else:
        with pytest.raises(RuntimeError, match="CUDA device"):
            region_presence(x, 16, backend="cuda")


def test_missing_extension_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(_ext, "C", None)
    monkeypatch.setattr(_ext, "IMPORT_ERROR", ImportError("libfoo.so: cannot open"))
    x, expected = hand_map()
    with pytest.raises(RuntimeError, match="libfoo.so"):
        region_presence(x, 16, backend="cpu")
    assert torch.equal(region_presence(x, 16), expected)  # auto falls back to the reference


@pytest.fixture
def reference_spy(monkeypatch):
    calls = []

    def spy(parsing, patch_size):
        calls.append(patch_size)
        return reference.region_presence(parsing, patch_size)

    monkeypatch.setattr(rp_module, "reference", SimpleNamespace(region_presence=spy))
    return calls


@pytest.mark.parametrize("env, uses_reference", [
    ("torch", True), pytest.param("cpu", False, marks=requires_ext),
    pytest.param("triton", False, marks=requires_ext),  # no Triton kernel: stays on auto
])
def test_env_var_forces_backend(monkeypatch, reference_spy, env, uses_reference):
    monkeypatch.setenv("FSFM_OPS_BACKEND", env)
    x, expected = hand_map()
    assert torch.equal(region_presence(x, 16), expected)
    assert (reference_spy == [16]) == uses_reference
    reference_spy.clear()
    region_presence(x, 16, backend="torch")  # an explicit argument beats the variable
    assert reference_spy == [16]


def test_env_var_rejects_unknown_backend(monkeypatch):
    monkeypatch.setenv("FSFM_OPS_BACKEND", "fastest")
    with pytest.raises(ValueError, match="FSFM_OPS_BACKEND"):
        region_presence(torch.zeros(1, 16, 16, dtype=torch.uint8), 16)


def test_import_without_extension_warns_once():
    code = BLOCK_EXTENSION + r"""
import warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import torch
    import fsfm_fast.ops as ops
    import fsfm_fast._ext
    x = torch.zeros(2, 32, 32, dtype=torch.uint8)
    out = ops.region_presence(x, 16)
mine = [w for w in caught if "fsfm_fast._C" in str(w.message)]
assert len(mine) == 1, [str(w.message) for w in caught]
assert "blocked by the test" in str(mine[0].message), mine[0].message
assert "reference" in str(mine[0].message), mine[0].message
assert out.tolist() == [[1] * 4] * 2, out
try:
    ops.region_presence(x, 16, backend="cpu")
except RuntimeError as error:
    assert "blocked by the test" in str(error), error
else:
    raise AssertionError("backend='cpu' must fail without the extension")
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


# ------------------------------------------------------------------ tracing


@requires_ext
def test_fake_impl_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        out = torch.ops.fsfm_fast.region_presence(torch.empty(5, 224, 112, dtype=torch.uint8), 14)
        assert out.shape == (5, 16 * 8) and out.dtype == torch.int16
    meta = region_presence(torch.empty(2, 64, 32, dtype=torch.uint8, device="meta"), 16)
    assert meta.shape == (2, 8) and meta.device.type == "meta"


@requires_ext
def test_torch_compile_fullgraph():
    compiled = torch.compile(lambda p: region_presence(p, 14, backend="cpu") | 1,
                             fullgraph=True, backend="aot_eager", dynamic=True)
    for batch in (2, 3):
        x = random_parsing(batch, 28, 56, seed=batch)
        assert torch.equal(compiled(x), reference.region_presence(x, 14) | 1)


@requires_ext
def test_opcheck():
    torch.library.opcheck(torch.ops.fsfm_fast.region_presence.default,
                          (random_parsing(2, 32, 48), 16))


# ------------------------------------------------------------------ CUDA


@pytest.mark.cuda
@requires_ext
@pytest.mark.parametrize("shape, patch", [
    ((8, 224, 224), 16), ((3, 224, 224), 14), ((2, 64, 96), 8), ((2, 30, 45), 15),
    ((1, 7, 5), 1), ((2, 2, 9000), 1),
])
def test_cuda_matches_cpu(shape, patch):
    if not _ext.cuda_built():
        pytest.fail("a GPU is present but fsfm_fast._C was built without CUDA")
    x = random_parsing(*shape, seed=patch)
    want = region_presence(x, patch, backend="cpu")
    assert torch.equal(region_presence(x.cuda(), patch, backend="cuda").cpu(), want)
    # Storage offset 1: unaligned rows take the byte-wide load path.
    base = torch.empty(x.numel() + 1, dtype=torch.uint8, device="cuda")
    unaligned = base[1:].view(shape)
    unaligned.copy_(x)
    assert torch.equal(region_presence(unaligned, patch, backend="cuda").cpu(), want)


@pytest.mark.cuda
@requires_ext
def test_cuda_rejects_bad_label():
    x = torch.zeros(2, 32, 32, dtype=torch.uint8, device="cuda")
    x[1, 5, 7] = 12
    with pytest.raises(ValueError, match="label 12"):
        torch.ops.fsfm_fast.region_presence(x, 16)


# ------------------------------------------------------------------ C++ tests


def _cmake():
    local = Path(sys.executable).parent / "cmake"
    return str(local) if local.exists() else shutil.which("cmake")


@pytest.mark.skipif(_cmake() is None, reason="cmake is not installed (requirements.txt)")
def test_cmake_build_and_ctest(tmp_path):
    build = tmp_path / "build"
    configure = [_cmake(), "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"]
    ninja = shutil.which("ninja") or shutil.which("ninja", path=str(Path(sys.executable).parent))
    if ninja:
        configure += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
    outputs = []
    for cmd in (configure, [_cmake(), "--build", str(build), "-j", "2"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
        outputs.append(proc.stdout)
    assert (build / "compile_commands.json").exists()
    ctest = Path(_cmake()).with_name("ctest")
    proc = subprocess.run([str(ctest), "--test-dir", str(build), "--output-on-failure"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "region_presence_cpu" in proc.stdout and "region_presence_replay" in proc.stdout
    if "fsfm_fast: CUDA kernels: ON" in outputs[0]:
        # The kernels compiled; the device test ran, or skipped without a GPU.
        assert "region_presence_cuda" in proc.stdout
