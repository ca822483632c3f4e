"""Data makers and checks shared by the shard and DALI tests."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from _maps import interior
from fsfm_fast.data import make_shards, render_face

# one colour per label, far apart, so a pixel's colour tells which label the image shows there
PALETTE = np.array([[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0],
                    [255, 0, 255], [0, 255, 255], [128, 0, 0], [0, 128, 0], [0, 0, 128]], np.uint8)


def palette_faces(root: Path, n: int, size: int, seed: int = 21) -> Path:
    """Reference-layout faces whose pixels are the palette colour of their label."""
    (root / "images").mkdir(parents=True)
    (root / "parsing_maps").mkdir()
    for i in range(n):
        _, parsing = render_face(np.random.default_rng([seed, i]), size)
        Image.fromarray(PALETTE[parsing]).save(root / "images" / f"face{i}.png")
        np.save(root / "parsing_maps" / f"face{i}.npy", parsing)
    return root


def shard(src, out: Path, *extra: str) -> Path:
    sources = [str(s) for s in (src if isinstance(src, (list, tuple)) else [src])]
    assert make_shards.main([*sources, "--out", str(out), *extra]) == 0
    return out


def colour_labels(rgb: np.ndarray) -> np.ndarray:
    """[H,W] label whose palette colour is nearest to each pixel of an [H,W,3] image in 0..255."""
    d = ((rgb[:, :, None, :].astype(np.float32) - PALETTE[None, None].astype(np.float32)) ** 2).sum(-1)
    return np.argmin(d, -1)


def _mirrored(shown: np.ndarray) -> bool | None:
    """Whether an image shows a mirrored face: the subject's left eye (4) lies on the image's right
    in the source faces; None when the crop does not show both eyes."""
    cols = np.arange(shown.shape[1])[None, :].repeat(shown.shape[0], 0)
    if (shown == 4).sum() < 3 or (shown == 5).sum() < 3:
        return None
    return bool(cols[shown == 4].mean() < cols[shown == 5].mean())


def map_agreement(images, parsing) -> tuple[float, int, int]:
    """(worst share of interior map pixels whose image colour shows the map's label, mirrored samples,
    samples whose orientation could be told) over a batch of images [B,3,S,S] in 0..255 and maps
    [B,S,S]. A mirrored image shows the source labels while its map must carry them swapped (2<->3,
    4<->5), so the expected colour there is that of the swapped label."""
    from fsfm_fast.data import FLIP_LABELS

    worst, mirrored, told = 1.0, 0, 0
    for img, labels in zip(np.asarray(images), np.asarray(parsing)):
        shown = colour_labels(img.transpose(1, 2, 0))
        inside = interior(labels)
        assert inside.mean() > 0.4
        flip = _mirrored(shown)
        if flip is None:
            agree = np.maximum((shown == labels)[inside].mean(), (shown == FLIP_LABELS[labels])[inside].mean())
        else:
            told, mirrored = told + 1, mirrored + flip
            agree = (shown == (FLIP_LABELS[labels] if flip else labels))[inside].mean()
        worst = min(worst, float(agree))
    return worst, mirrored, told


def fingerprint(parsing) -> str:
    return hashlib.sha1(np.ascontiguousarray(np.asarray(parsing, np.uint8)).tobytes()).hexdigest()


def tamper_label(src: Path, out: Path, label: int = 12) -> str:
    """A copy of shard folder ``src`` whose first map of its first shard holds ``label`` at one pixel
    (what make_shards never writes, but another tool or a later edit could); returns that member's name."""
    import io
    import shutil
    import tarfile

    from fsfm_fast.data.shards import format_index, load_manifest

    shutil.copytree(src, out)
    entry = load_manifest(out)["shards"][0]
    members, changed = [], None
    with tarfile.open(src / entry["tar"]) as tar:
        for info in tar.getmembers():
            data = tar.extractfile(info).read()
            if changed is None and info.name.endswith(".parse.png"):
                labels = np.array(Image.open(io.BytesIO(data)))
                labels[1, 1] = label
                buf = io.BytesIO()
                Image.fromarray(labels, "L").save(buf, format="PNG")
                data, changed = buf.getvalue(), info.name
            members.append((info.name, data))
    rows = {}
    with tarfile.open(out / entry["tar"], "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            key, ext = name.split(".", 1)
            rows.setdefault(key, []).append((ext, tar.offset - -(-len(data) // 512) * 512, len(data), name))
    (out / entry["index"]).write_text(format_index(list(rows.values())), encoding="utf-8")
    return changed
