"""What a probe run writes: ``metrics.json``, ``table.md`` (the printed table) and ``embedding.png``, the
test features of each set under each encoder in two dimensions, coloured by class, side by side."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA

from ..plots import _pyplot

PICTURE = "embedding.png"
LEGEND_MAX = 10  # more classes than this (identities) are told apart by colour alone


def _fmt(x) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.4f}"


def format_table(metrics: dict) -> str:
    """One row per (set, encoder)."""
    # chance: the accuracy of always calling the test set's most frequent class, the floor to beat
    lines = ["| set | encoder | classes | train / test | chance | k-NN top-1 | linear acc | linear AUC |",
             "|" + " --- |" * 8]
    for set_name, entry in metrics["sets"].items():
        for enc_name, m in entry["encoders"].items():
            lines.append(f"| {set_name} | {enc_name} | {len(entry['classes'])} | {m['n_train']} / {m['n_test']} | "
                         f"{_fmt(m['chance'])} | {_fmt(m['knn_top1'])} | {_fmt(m['linear_acc'])} | "
                         f"{_fmt(m.get('linear_auc'))} |")
    return "\n".join(lines)


def plot_embeddings(panels: dict[str, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]],
                    classes: dict[str, tuple[str, ...]], out_png: Path) -> Path:
    """``panels[set][encoder] = (train features, test features, test classes)``: PCA fitted on the train
    features, the test features drawn in its first two components."""
    plt = _pyplot()
    sets = list(panels)
    encoders = list(dict.fromkeys(e for s in sets for e in panels[s]))
    fig, axes = plt.subplots(len(sets), len(encoders), figsize=(4.2 * len(encoders), 3.8 * len(sets)), squeeze=False)
    for r, set_name in enumerate(sets):
        names = classes[set_name]
        cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
        for c, enc in enumerate(encoders):
            ax = axes[r][c]
            if enc not in panels[set_name]:
                ax.set_axis_off()
                continue
            train_x, test_x, test_y = panels[set_name][enc]
            xy = PCA(n_components=2, random_state=0).fit(train_x).transform(test_x)
            for k, name in enumerate(names):
                pick = test_y == k
                if pick.any():
                    ax.scatter(xy[pick, 0], xy[pick, 1], s=9, color=cmap(k % cmap.N), alpha=0.8, label=name)
            ax.set_title(f"{set_name}: {enc}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            if len(names) <= LEGEND_MAX:
                ax.legend(fontsize=7, loc="best")
    fig.suptitle("test features, first two principal components of the train features", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def write_outputs(out_dir: Path, metrics: dict, panels: dict, classes: dict, header: str) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, allow_nan=True) + "\n", encoding="utf-8")
    plot_embeddings(panels, classes, out_dir / PICTURE)
    table = header + "\n\n" + format_table(metrics) + "\n"
    (out_dir / "table.md").write_text(table, encoding="utf-8")
    return table
