"""Routing heatmaps (as in the paper's Fig. 3/6): which expert units are on at each timestep."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; workers have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def routing_heatmap(
    w_gate: np.ndarray, w_prior: np.ndarray, num_blocks: int, path: str | Path, title: str = ""
) -> Path:
    """w_gate and the prior matched to it, both [T, U], side by side: units on the x axis, t downwards,
    with a line between blocks (U = blocks x experts)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharey=True, constrained_layout=True)
    units = w_gate.shape[1]
    per_block = units // max(num_blocks, 1)
    for ax, data, name in ((axes[0], w_gate, "w_gate (top-k of the gates)"), (axes[1], w_prior, "w_prior, matched")):
        ax.imshow(data, aspect="auto", interpolation="nearest", cmap="Greys", vmin=0, vmax=1)
        for b in range(1, num_blocks):
            ax.axvline(b * per_block - 0.5, color="tab:red", linewidth=0.6)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("expert unit (block-major)")
    axes[0].set_ylabel("timestep t")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
