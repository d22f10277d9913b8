"""The concept-frequency plot of ``balance``: how flat the head-heavy distribution gets."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from llava_ov.concepts.balance import Selection, concept_counts  # noqa: E402


def plot_concept_frequency(topk: np.ndarray, sel: Selection, n_concepts: int, path: Path) -> None:
    """Rank-frequency curves (log-log) of the pool, the uniform baseline and the balanced selection."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, mask in [("before (pool)", None), ("uniform random", sel.random), ("after (balanced)", sel.selected)]:
        freq = np.sort(concept_counts(topk, n_concepts, mask))[::-1]
        freq = freq[freq > 0]
        ax.loglog(np.arange(1, len(freq) + 1), freq, label=f"{name}: {len(freq)} concepts")
    ax.set_xlabel("concept rank")
    ax.set_ylabel("images with the concept in their top-k")
    ax.set_title("Concept frequency before / after balancing")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
