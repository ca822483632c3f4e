"""Epoch-aware distributed sampling with exact mid-epoch resume: shuffled epochs of a whole dataset
(``EpochSampler``), and batches balanced over groups of samples (``BalancedBatchSampler``)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Sampler


def _positive_int(value, name: str) -> int:
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


def batches_per_epoch(num_samples: int, batch_size: int, num_replicas: int = 1) -> int:
    """Full batches each rank gets per epoch when every rank drops its incomplete last batch."""
    num_samples = int(num_samples)
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    return num_samples // (_positive_int(batch_size, "batch_size") * _positive_int(num_replicas, "num_replicas"))


class EpochSampler(Sampler):
    """Yields ``(index, epoch)`` keys for this rank.

    The order of an epoch is a permutation drawn from ``torch.Generator`` seeded with
    ``seed + epoch``, the same on every rank; rank ``r`` takes every ``num_replicas``-th index from
    position ``r``, as ``DistributedSampler`` does. With ``drop_last`` the permutation is cut to a
    multiple of ``num_replicas`` (of ``num_replicas * batch_size`` when ``batch_size`` is given, so
    every rank has the same number of full batches); without it, it is padded by wrapping around.
    ``set_epoch(epoch, start_index)`` skips this rank's first ``start_index`` keys, so a run stopped
    mid-epoch resumes with exactly the samples it had not seen.
    """

    def __init__(self, num_samples: int, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = True, batch_size: int | None = None):
        self.num_samples = _positive_int(num_samples, "num_samples")
        self.num_replicas = _positive_int(num_replicas, "num_replicas")
        if int(rank) != rank or not 0 <= rank < self.num_replicas:
            raise ValueError(f"rank must be in [0, {self.num_replicas}), got {rank}")
        self.rank = int(rank)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.batch_size = None if batch_size is None else _positive_int(batch_size, "batch_size")
        if self.drop_last:
            unit = self.num_replicas * (self.batch_size or 1)
            self.total_size = self.num_samples // unit * unit
            if self.total_size == 0:
                raise ValueError(f"{self.num_samples} samples cannot give each of {self.num_replicas} "
                                 f"rank(s) one {'batch of ' + str(self.batch_size) if self.batch_size else 'sample'}")
        else:
            self.total_size = -(-self.num_samples // self.num_replicas) * self.num_replicas
        self.per_rank = self.total_size // self.num_replicas
        self.epoch = 0
        self.start_index = 0

    def set_epoch(self, epoch: int, start_index: int = 0) -> None:
        if int(epoch) != epoch or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch}")
        if int(start_index) != start_index or not 0 <= start_index <= self.per_rank:
            raise ValueError(f"start_index must be in [0, {self.per_rank}] (this rank's share), got {start_index}")
        self.epoch, self.start_index = int(epoch), int(start_index)

    def order(self) -> list[int]:
        """The whole epoch's index order shared by all ranks (length ``total_size``)."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        if self.total_size <= len(order):
            return order[:self.total_size]
        reps = -(-self.total_size // len(order))
        return (order * reps)[:self.total_size]

    def __iter__(self):
        share = self.order()[self.rank:self.total_size:self.num_replicas]
        epoch = self.epoch
        return iter([(i, epoch) for i in share[self.start_index:]])

    def __len__(self) -> int:
        return self.per_rank - self.start_index


class BalancedBatchSampler:
    """Batches with ``per_group`` samples of every group: the reference's face anti-spoofing batches,
    12 of each (source domain, class). A batch sampler for ``DataLoader(batch_sampler=...)``.

    Each group is an endless stream of passes over its samples; pass p of group g is a permutation drawn
    from ``numpy.random.default_rng([seed, g, p])``, so every sample comes once per pass, and the groups
    cycle independently (a small group is seen more often than a large one, as in the reference).
    Iteration t on rank r takes positions ``[(t * W + r) * k, (t * W + r + 1) * k)`` of every group's
    stream (W ranks, k per group): all ranks together also see each sample once per pass. A batch is a
    list of ``(index, t)`` keys: the iteration seeds the sample's augmentation. Nothing is kept between
    batches, so ``set_epoch(epoch, start_index)`` places the sampler at iteration
    ``epoch * iters_per_epoch + start_index // batch_size`` exactly, which is how the fine-tuning engine
    resumes; an "epoch" is just ``iters_per_epoch`` iterations.
    """

    def __init__(self, groups: list[list[int]], per_group: int, iters_per_epoch: int, num_replicas: int = 1,
                 rank: int = 0, seed: int = 0):
        self.groups = [list(map(int, g)) for g in groups]
        if not self.groups or any(not g for g in self.groups):
            raise ValueError("BalancedBatchSampler needs at least one group, and samples in every group")
        self.per_group = _positive_int(per_group, "per_group")
        self.iters_per_epoch = _positive_int(iters_per_epoch, "iters_per_epoch")
        self.num_replicas = _positive_int(num_replicas, "num_replicas")
        if int(rank) != rank or not 0 <= rank < self.num_replicas:
            raise ValueError(f"rank must be in [0, {self.num_replicas}), got {rank}")
        self.rank, self.seed = int(rank), int(seed)
        self.batch_size = self.per_group * len(self.groups)
        self.start = 0  # the first iteration the next __iter__ yields
        self.end = self.iters_per_epoch
        self._passes: dict[tuple[int, int], list[int]] = {}

    def set_epoch(self, epoch: int, start_index: int = 0) -> None:
        if int(epoch) != epoch or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch}")
        if int(start_index) != start_index or start_index % self.batch_size or \
                not 0 <= start_index <= self.iters_per_epoch * self.batch_size:
            raise ValueError(f"start_index must be a multiple of the batch size {self.batch_size} within the epoch, "
                             f"got {start_index}")
        self.start = int(epoch) * self.iters_per_epoch + int(start_index) // self.batch_size
        self.end = (int(epoch) + 1) * self.iters_per_epoch

    def _pass(self, group: int, number: int) -> list[int]:
        key = (group, number)
        if key not in self._passes:
            if len(self._passes) > 4 * len(self.groups):
                self._passes.clear()
            members = self.groups[group]
            self._passes[key] = [members[i] for i in np.random.default_rng([self.seed, group, number])
                                 .permutation(len(members))]
        return self._passes[key]

    def batch(self, iteration: int) -> list[tuple[int, int]]:
        """This rank's keys of ``iteration``: ``per_group`` of each group, group by group."""
        keys = []
        first = (iteration * self.num_replicas + self.rank) * self.per_group
        for g, members in enumerate(self.groups):
            n = len(members)
            keys += [(self._pass(g, p // n)[p % n], iteration) for p in range(first, first + self.per_group)]
        return keys

    def __iter__(self):
        return (self.batch(t) for t in range(self.start, self.end))

    def __len__(self) -> int:
        return self.end - self.start
