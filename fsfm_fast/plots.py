"""The pictures runs end with: loss curves, masked faces next to their reconstructions, ROC curves."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import ops
from .data import collate_faces
from .engine.run_log import read_log


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt
    return plt


def plot_loss_curves(log_path: str | Path, out_png: str | Path) -> Path:
    rows = read_log(log_path, "train")
    if not rows:
        raise ValueError(f"no training records in {log_path}")
    plt = _pyplot()
    keys = [("loss", "total"), ("loss_rec_all", "reconstruction (all hidden)"),
            ("loss_rec_sfr", "reconstruction (covered region)"), ("loss_cl", "distillation")]
    probes = [r for r in read_log(log_path, "val") if any(k.startswith("probe/") for k in r)]
    fig, axes = plt.subplots(1, len(keys) + bool(probes), figsize=(4.2 * (len(keys) + bool(probes)), 3.4))
    steps = np.array([r["step"] for r in rows])
    for ax, (key, title) in zip(axes, keys):
        values = np.array([r.get(key, np.nan) for r in rows], dtype=float)
        ax.plot(steps, values, lw=1.2)
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    if probes:  # the health monitor (--probe_data): k-NN top-1 of both encoders
        ax = axes[-1]
        for network in ("online", "target"):
            key = f"probe/{network}_knn_top1"
            ax.plot([r["step"] for r in probes], [r.get(key, np.nan) for r in probes], "o-", lw=1.2, label=network)
        ax.set_title("health monitor: k-NN top-1")
        ax.set_xlabel("iteration")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def _to_rgb(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    x = (images.float().cpu() * s + m).clamp(0, 1)
    return x.permute(0, 2, 3, 1).numpy()


def plot_reconstructions(images: torch.Tensor, img_mask: torch.Tensor, fr_mask: torch.Tensor,
                         recon: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                         patch_size: int, out_png: str | Path) -> Path:
    """Rows of: input, input with hidden patches greyed (covered region tinted), reconstruction,
    reconstruction pasted into the visible patches. ``recon`` is an image batch in input space."""
    plt = _pyplot()
    b, _, h, w = images.shape
    gh, gw = h // patch_size, w // patch_size

    def up(mask: torch.Tensor) -> np.ndarray:
        grid = mask.reshape(b, gh, gw).float().cpu()
        return grid.repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2).numpy()[..., None]

    hidden, region = up(img_mask), up(fr_mask)
    orig, rec = _to_rgb(images, mean, std), _to_rgb(recon, mean, std)
    masked = orig * (1 - hidden) + 0.5 * hidden
    masked = masked * (1 - region) + region * np.array([0.85, 0.45, 0.45])
    pasted = orig * (1 - hidden) + rec * hidden
    columns = [("input", orig), ("hidden (red: covered region)", masked),
               ("reconstruction", rec), ("visible + reconstruction", pasted)]
    fig, axes = plt.subplots(b, len(columns), figsize=(2.2 * len(columns), 2.2 * b), squeeze=False)
    for i in range(b):
        for j, (title, pics) in enumerate(columns):
            ax = axes[i, j]
            ax.imshow(pics[i])
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=8)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


@torch.no_grad()
def final_pictures(args, online, dataset, device, mean_std, out_dir: Path, log) -> None:
    """What a finished pretraining run leaves to look at: its loss curves, and the first faces of its
    data masked, next to the online network's reconstructions."""
    log_path = Path(args.log_dir or out_dir) / "log.jsonl"
    if log_path.is_file():
        plot_loss_curves(log_path, out_dir / "loss_curves.png")
    samples = [dataset[i] for i in range(min(6, len(dataset)))]
    batch = collate_faces(samples)
    if batch["images"].shape[0] == 0:
        return
    images = batch["images"].to(device)
    parsing = batch["parsing"].to(device)
    p = online.patch_size
    img_mask, fr_mask = ops.crfrp_mask(parsing, patch_size=p, mask_ratio=args.mask_ratio,
                                       strategy=args.mask_strategy, region="image",
                                       seed=args.seed + 1, offset=0)
    online.eval()
    pred = online(images, img_mask, fr_mask).pred.float()
    if args.norm_pix_loss:  # back from per-patch normalised space to the input's
        target = ops.patchify(images.float(), p)
        pred = pred * (target.var(dim=-1, keepdim=True) + 1e-6).sqrt() + target.mean(dim=-1, keepdim=True)
    recon = ops.unpatchify(pred, p, images.shape[2], images.shape[3])
    plot_reconstructions(images, img_mask, fr_mask, recon, *mean_std, p, out_dir / "reconstructions.png")
    log.message(f"wrote {out_dir / 'loss_curves.png'} and {out_dir / 'reconstructions.png'}")


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], out_png: str | Path,
             title: str = "ROC") -> Path:
    """One ROC curve per entry ``name -> (fpr, tpr, auc)``, on one set of axes with the chance diagonal.
    A curve of one type of a set (a name with " / ") is drawn thin and dashed, so that the whole sets
    stand out among their types."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    ax.plot([0, 1], [0, 1], ls=":", lw=1, color="grey")
    for name, (fpr, tpr, auc) in curves.items():
        part = " / " in name
        ax.plot(fpr, tpr, lw=1.0 if part else 1.8, ls="--" if part else "-", label=f"{name} (AUC {auc:.3f})")
    ax.set_xlabel("false positive rate (real called fake)")
    ax.set_ylabel("true positive rate (fake called fake)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
