"""Numbers a training step produces, kept on the device so that the step never waits for the GPU.

The loss sums of the current log window, the counters of steps skipped for a non-finite loss or
gradient, the last gradient norm: each step adds to them with device ops only, and ``read`` brings
everything back in one transfer when a log row is written. Every training verb can keep its step
sync-free this way.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..runtime.distributed import DistInfo


class StepStats:
    """Per-step numbers on the device. ``names``: the loss values each step reports, in order."""

    def __init__(self, names: tuple[str, ...], device: torch.device):
        self.names = tuple(names)
        n = len(self.names)
        self.N_OK, self.TOTAL, self.IN_A_ROW, self.WORST_RUN, self.GRAD_NORM = range(n, n + 5)
        self.values = torch.zeros(n + 5, dtype=torch.float64, device=device)
        self.values[self.GRAD_NORM] = float("nan")

    def add(self, losses: list[torch.Tensor], counted: torch.Tensor, grad_norm: torch.Tensor | None) -> None:
        """One step: its losses join the window unless ``counted`` (a bool device tensor) marks it as
        skipped for a non-finite value; the counters of such steps move on the device."""
        v, n = self.values, len(self.names)
        kept = ~counted
        v[:n] += torch.where(kept, torch.stack(losses).detach().double(), 0.0)
        v[self.N_OK] += kept.double()
        v[self.TOTAL] += counted.double()
        v[self.IN_A_ROW] = torch.where(counted, v[self.IN_A_ROW] + 1, 0.0)
        v[self.WORST_RUN] = torch.maximum(v[self.WORST_RUN], v[self.IN_A_ROW])
        if grad_norm is not None:
            v[self.GRAD_NORM] = torch.where(kept, grad_norm.double(), v[self.GRAD_NORM])

    def read(self, info: DistInfo) -> dict:
        """The window's loss means (over ranks), the skip counters, the longest run of skipped steps
        since the last window and the last gradient norm (None before any): one transfer."""
        window = self.values[:self.N_OK + 1].clone()
        if info.enabled:  # the skip flags are global already: only the sums differ between ranks
            dist.all_reduce(window)
        values = torch.cat([window, self.values[self.N_OK + 1:]]).tolist()
        n_ok, grad_norm = values[self.N_OK], values[self.GRAD_NORM]
        return {**{name: values[i] / n_ok if n_ok else float("nan") for i, name in enumerate(self.names)},
                "nonfinite_total": int(values[self.TOTAL]), "worst_run": int(values[self.WORST_RUN]),
                "grad_norm": None if grad_norm != grad_norm else grad_norm}

    def next_window(self) -> None:
        self.values[:self.N_OK + 1] = 0.0
        self.values[self.WORST_RUN] = self.values[self.IN_A_ROW]

    def counters(self) -> dict:
        return {"nonfinite_total": int(self.values[self.TOTAL]), "nonfinite_in_a_row": int(self.values[self.IN_A_ROW])}

    def restore(self, counters: dict) -> None:
        self.values[self.TOTAL] = float(counters.get("nonfinite_total", 0))
        self.values[self.IN_A_ROW] = self.values[self.WORST_RUN] = float(counters.get("nonfinite_in_a_row", 0))
