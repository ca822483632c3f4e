"""Synthetic identities: several pictures of each synthetic person, in class folders named by person, for
probes that ask whether an encoder tells people apart (``python -m fsfm_fast.probe``).

    root/train/id<person>/s0_frame_<t>.png    the person's first recording
    root/test/ id<person>/s1_frame_<t>.png    a second recording of the same person

The two splits hold the same people in different pictures (a split by image). They are two recordings
(``forgery.real_video`` sessions 0 and 1): the same face, but another background and hair texture, other
jitter of pose, gaze and light, other camera noise. Taking the test pictures from a second recording
keeps a probe from matching a picture to its train twin by the background alone.

The people are drawn from ``IDENTITY_OFFSET`` on, a range no other synthetic set uses, so an encoder
pretrained on the embedded synthetic faces has never seen them.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from .forgery import _save_png, real_video
from .synthetic import _write_json, benchmark_is_current, map_in_processes

MANIFEST_NAME = "identity_manifest.json"
VERSION = 1
IDENTITY_OFFSET = 5_000_000  # forgery.py's splits start at 0, 1e6 and 2e6
SESSIONS = {"train": 0, "test": 1}


def _write_identity(job: tuple) -> int:
    root, person, seed, size, n_frames = job
    name = f"id{IDENTITY_OFFSET + person:07d}"
    for split, session in SESSIONS.items():
        folder = Path(root) / split / name
        folder.mkdir(parents=True, exist_ok=True)
        for t, frame in enumerate(real_video(seed, IDENTITY_OFFSET + person, n_frames, size, session)):
            _save_png(frame.image, folder / f"s{session}_frame_{t}.png")
    return person


def write_identity_benchmark(root, identities: int = 32, frames: int = 4, size: int = 128, seed: int = 0,
                             workers: int | None = None) -> Path:
    """Write ``identities`` people with ``frames`` pictures each in train/ and in test/ under ``root``;
    a folder whose manifest matches is left as it is, one with another manifest is rewritten, and a
    non-empty folder without one is refused (it may hold the user's data)."""
    if int(identities) != identities or identities < 2:
        raise ValueError(f"identities must be an integer >= 2, got {identities}")
    if int(frames) != frames or frames < 1:
        raise ValueError(f"frames must be a positive integer, got {frames}")
    root = Path(root)
    wanted = {"generator": "fsfm_fast.data.identities", "version": VERSION, "seed": int(seed), "size": int(size),
              "frames": int(frames), "identities": int(identities)}
    manifest = root / MANIFEST_NAME
    if benchmark_is_current(manifest, wanted, "synthetic identities"):
        return root
    for split in SESSIONS:
        shutil.rmtree(root / split, ignore_errors=True)
    jobs = [(str(root), person, int(seed), int(size), int(frames)) for person in range(int(identities))]
    map_in_processes(_write_identity, jobs, workers, per_process=8, chunksize=2)
    _write_json(manifest, wanted)
    return root
