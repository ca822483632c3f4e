"""Start-up self-check: every compiled and Triton op a run will use, run once against the reference.

Until a GPU has run them, the CUDA and Triton kernels are compiled and replayed on the CPU, never
executed; a user's first run on a GPU must not be the first execution of a kernel that then crashes
or computes garbage. ``selfcheck(device)`` runs each non-reference implementation that "auto" (or
the forced backend) picks for ``device`` on a small input, forward and backward, and compares it
with ``reference.py`` at the tolerances of the tests. An op that raises or mismatches is switched to
the reference for the rest of the process (one loud line says which, and why); with
``backend="triton"`` the failure is an error instead. On a GPU the first Triton launches also
compile the kernels the training step needs, so the check costs little beyond that.

    python -m fsfm_fast.ops.selfcheck [--device cuda] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch

from .. import _ext
from ..runtime.cli import UsageError
from . import reference
from . import _checks
from ._checks import resolve_backend
from ._triton_support import use_triton

# Largest error allowed, relative to the largest magnitude of the expected tensor: the tolerances
# of tests/test_triton_ops.py (which imports them from here).
TOLERANCES = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
MASK_OPS = ("crfrp_mask", "region_presence")
TOKEN_OPS = ("gather_visible", "restore_masked", "fsfm_loss")
REPORT = ("please report it, with this line and the output of `python -m fsfm_fast.ops.selfcheck "
          "--device {device}`, to the fsfm_fast issue tracker")


class SelfCheckError(UsageError):
    """A kernel failed the self-check under ``--ops triton``: one line naming the op."""


@dataclass
class Check:
    op: str
    impl: str
    ok: bool
    detail: str
    seconds: float


def backends_in_use(device, ops_backend: str = "auto") -> dict[str, str]:
    """The implementation each op runs on ``device``: "cuda"/"cpu" (compiled), "triton", or "torch"."""
    device = torch.device(device)
    chosen = {op: _ext.choose_backend(op, resolve_backend("auto", ("cpu", "cuda", "torch"), op), device)
              for op in MASK_OPS}
    for op in TOKEN_OPS:
        backend = resolve_backend(ops_backend, ("torch", "triton"), op)
        chosen[op] = "triton" if use_triton(backend, op, device, ()) else "torch"
    return chosen


def max_relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want| (exact zero when both are empty), in float64 on the CPU."""
    if got.shape != want.shape:
        raise ValueError(f"shape {tuple(got.shape)} differs from the reference's {tuple(want.shape)}")
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    if want.numel() == 0:
        return 0.0
    scale = max(want.abs().max().item(), 1e-12)
    return (got - want).abs().max().item() / scale


# ------------------------------------------------------------------------------------------ checks


def _labels(batch: int, size: int, device, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # blocks of 8x8 pixels with one label each, plus some single-pixel noise: patches touch
    # one or several groups, as on faces
    blocks = -(-size // 8)
    coarse = torch.randint(0, reference.NUM_LABELS, (batch, blocks, blocks), generator=g)
    maps = coarse.repeat_interleave(8, 1).repeat_interleave(8, 2)[:, :size, :size]
    noise = torch.rand(maps.shape, generator=g) < 0.02
    maps = torch.where(noise, torch.randint(0, reference.NUM_LABELS, maps.shape, generator=g), maps)
    return maps.to(torch.uint8).to(device)


def _check_region_presence(device, geo) -> float:
    from .region_presence import region_presence
    parsing = _labels(3, geo["image_size"], device, seed=1)
    got = region_presence(parsing, geo["patch"], backend=device.type)
    want = reference.region_presence(parsing.cpu(), geo["patch"])
    return 0.0 if torch.equal(got.cpu(), want) else float("inf")


def _check_crfrp_mask(device, geo) -> float:
    """SPEC section 2 invariants (the reference draws other random numbers, so masks are not
    compared with it); on CUDA also bit-identity with the CPU twin, which CI tests in depth."""
    from .crfrp_mask import crfrp_mask
    p, size = geo["patch"], geo["image_size"]
    parsing = _labels(4, size, device, seed=2)
    L = (size // p) ** 2
    M = reference.num_masked(0.75, L)
    touch = reference.group_touch(reference.region_presence(parsing.cpu(), p))
    for region in range(reference.NUM_REGIONS):
        img, fr = crfrp_mask(parsing, p, 0.75, region_index=region, backend=device.type, seed=7, offset=region)
        img, fr = img.cpu(), fr.cpu()
        region_patches = touch[:, region]
        small = region_patches.sum(1) < M
        if not ((img.sum(1) == M).all() and not (fr & ~img).any()
                and torch.equal(fr[small], region_patches[small])):
            return float("inf")
        if device.type == "cuda" and _ext.has_extension():
            twin = crfrp_mask(parsing.cpu(), p, 0.75, region_index=region, backend="cpu", seed=7, offset=region)
            if not (torch.equal(img, twin[0]) and torch.equal(fr, twin[1])):
                return float("inf")
    return 0.0


def _autocast(device, amp_dtype):
    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()


def _compare(run: Callable, inputs: list[torch.Tensor], device, amp_dtype, frozen: tuple = ()) -> float:
    """Worst relative error of the op (Triton) against the reference, forward and the gradient of
    every input but those at the positions in ``frozen``."""
    worst = 0.0
    results = []
    for backend in ("triton", "torch"):
        leaves = [t.detach().clone().to(device).requires_grad_(i not in frozen) for i, t in enumerate(inputs)]
        with _autocast(device, amp_dtype):
            out = run(leaves, backend)
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(5)).to(device, out.dtype)
        grads = torch.autograd.grad(out, [t for t in leaves if t.requires_grad], upstream)
        results.append([out, *grads])
    for got, want in zip(*results):
        worst = max(worst, max_relative_error(got, want))
    return worst


def _token_inputs(geo, seed: int):
    g = torch.Generator().manual_seed(seed)
    p, size, dim, batch = geo["patch"], geo["image_size"], geo["dim"], 2
    L = (size // p) ** 2
    keep = L - reference.num_masked(0.75, L)
    hidden = torch.rand(batch, L, generator=g).argsort(1).argsort(1) >= keep
    ids_keep, ids_restore = reference.mask_to_indices(hidden, keep)
    return g, p, size, dim, batch, L, keep, hidden, ids_keep, ids_restore


def _check_gather_visible(device, geo, amp_dtype) -> float:
    from .gather_visible import gather_visible
    g, p, size, dim, batch, L, keep, _, ids_keep, _ = _token_inputs(geo, 3)
    images = torch.randn(batch, 3, size, size, generator=g)
    weight = torch.randn(dim, 3, p, p, generator=g) * 0.02
    bias = torch.randn(dim, generator=g)
    pos = torch.randn(L, dim, generator=g)
    ids = ids_keep.to(device)

    def run(x, backend):
        return gather_visible(x[0], ids, x[1], x[2], x[3], backend=backend)
    return _compare(run, [images, weight, bias, pos], device, amp_dtype)


def _check_restore_masked(device, geo, amp_dtype) -> float:
    from .restore_masked import restore_masked
    g, _, _, dim, batch, L, keep, _, _, ids_restore = _token_inputs(geo, 4)
    tokens = torch.randn(batch, keep + 1, dim, generator=g)
    mask_token = torch.randn(1, 1, dim, generator=g)
    pos = torch.randn(L + 1, dim, generator=g)
    ids = ids_restore.to(device)

    def run(x, backend):
        return restore_masked(x[0], ids, x[1], x[2], backend=backend)
    return _compare(run, [tokens, mask_token, pos], device, amp_dtype)


def _check_fsfm_loss(device, geo, amp_dtype) -> float:
    from .fsfm_loss import fsfm_loss
    g, p, size, _, batch, L, _, hidden, _, _ = _token_inputs(geo, 5)
    images = torch.randn(batch, 3, size, size, generator=g)
    pred = torch.randn(batch, L, 3 * p * p, generator=g)
    online = torch.randn(batch, 256, generator=g)
    target = torch.randn(batch, 256, generator=g)
    img_mask = hidden.to(device)
    fr_mask = (hidden & (torch.rand(batch, L, generator=g) < 0.5)).to(device)
    pred_dtype = amp_dtype or torch.float32

    def run(x, backend):
        out = fsfm_loss(x[0].to(pred_dtype), x[1], img_mask, fr_mask, x[2], x[3], patch_size=p,
                        backend=backend)
        return torch.stack(list(out))
    return _compare(run, [pred, images, online, target], device, None, frozen=(1, 3))


CHECKS = {
    "region_presence": lambda device, geo, amp: _check_region_presence(device, geo),
    "crfrp_mask": lambda device, geo, amp: _check_crfrp_mask(device, geo),
    "gather_visible": _check_gather_visible,
    "restore_masked": _check_restore_masked,
    "fsfm_loss": _check_fsfm_loss,
}


# ------------------------------------------------------------------------------------------ entry


def selfcheck(device, backend: str = "auto", *, patch: int = 16, dim: int = 64, image_size: int = 32,
              amp_dtype: Optional[torch.dtype] = None, log: Callable[[str], None] = print) -> dict:
    """Check every non-reference implementation ``backend`` uses on ``device``; returns the outcome.

    ``patch``, ``dim``, ``image_size`` and ``amp_dtype`` give the geometry to test with: a run passes
    its model's, so that the kernels compiled here are the ones its steps reuse. A failure switches
    the op to the reference (logged loudly), or raises SelfCheckError when ``backend`` is "triton".
    """
    device = torch.device(device)
    if image_size % patch or image_size < patch:
        raise ValueError(f"image_size {image_size} must be a positive multiple of patch {patch}")
    geo = dict(patch=patch, dim=dim, image_size=image_size)
    tol = TOLERANCES[amp_dtype or torch.float32]
    checks = []
    try:
        in_use = backends_in_use(device, backend)
    except (RuntimeError, TypeError) as exc:  # a forced backend that cannot run here
        raise SelfCheckError(str(exc)) from None
    for op, impl in in_use.items():
        if impl == "torch":
            continue
        start = time.perf_counter()
        try:
            error = CHECKS[op](device, geo, amp_dtype)
            ok = error <= (0.0 if op in MASK_OPS else tol)
            if op in MASK_OPS:
                detail = "as the reference" if ok else "output differs from the reference (or breaks SPEC section 2)"
            else:
                detail = f"max relative difference {error:.3g} (tolerance {tol:g})"
        except Exception as exc:  # noqa: BLE001  any failure of a kernel means: do not trust it
            ok, detail = False, f"raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        checks.append(Check(op, impl, ok, detail, round(time.perf_counter() - start, 4)))
        if ok:
            continue
        line = (f"fsfm_fast self-check: {op} ({impl} on {device}) FAILED: {detail}; "
                + REPORT.format(device=device.type))
        if backend == "triton":
            raise SelfCheckError(line)
        _checks.FALLBACKS[op] = detail
        log(f"!!! {line}. This run uses the PyTorch reference for {op} instead (slower, same results).")
    return {"device": str(device), "backend": backend, "geometry": dict(geo, amp_dtype=str(amp_dtype)),
            "versions": versions(), "checks": [asdict(c) for c in checks],
            "fallbacks": dict(_checks.FALLBACKS), "in_use": backends_in_use(device, backend)}


def versions() -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "triton": triton_version, "gpu": gpu, "extension": _ext.has_extension(),
            "extension_cuda": _ext.cuda_built()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser("fsfm_fast.ops.selfcheck", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--ops", default="auto", choices=["auto", "triton"])
    p.add_argument("--json", default=None, help="also write the outcome here")
    args = p.parse_args(argv)
    outcome = selfcheck(args.device, args.ops)
    text = json.dumps(outcome, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0 if not outcome["fallbacks"] else 1


if __name__ == "__main__":
    from ..runtime.cli import run
    sys.exit(run(main, "fsfm_fast.ops.selfcheck"))
