"""A dispatch mode that fails on any op reading a tensor's value back to the host, for the CPU tests
that stand in for the CUDA sync-debug tests."""
from __future__ import annotations

import torch

# Ops that read a tensor back to the host (item, bool, int, nonzero, ...): on a GPU, each one stops
# the CPU until the GPU catches up.
HOST_READS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::equal", "aten::is_nonzero",
              "aten::masked_select", "aten::unique_dim", "aten::_unique2", "aten::allclose"}


class NoHostReads(torch.utils._python_dispatch.TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in HOST_READS:
            raise AssertionError(f"the training step read a tensor back to the host: {func._schema.name}")
        return func(*args, **(kwargs or {}))
