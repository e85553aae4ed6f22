"""Training curves as a PNG (matplotlib's Agg backend: no display, no browser).

``plot_training_curves(log_history, path, method="SOP", num_prototypes=...)`` answers "is it learning?" in up to three
panels against the optimizer step:

1. the losses, with the loss of uniform targets (``ln P`` of the method's own P) as the no-learning reference;
2. the monitor's k-NN top-1, with the random-init level (``random_init_knn_top1@k`` in the history, or the
   ``random_init_knn`` argument) as a dashed line: a curve that stays on it has learnt nothing;
3. the collapse indicators: effective rank of the head outputs and of the memory (1 = every embedding on one line),
   the backbone's effective rank, and the mean anchor-support cosine (1 = supports are copies of their anchor).

``Method.uniform_reference(config)`` (``sop_hf.methods``) gives the method's P and its name for that reference line.
"""

import math
from pathlib import Path


def plot_training_curves(
    log_history: list[dict],
    path: str | Path,
    uniform_loss: float | None = None,
    title: str | None = None,
    method: str = "SOP",
    num_prototypes: int | None = None,
    prototype_symbol: str = "P'",
    random_init_knn: float | None = None,
    loss_labels: dict[str, str] | None = None,
) -> Path:
    """Write the curves of ``trainer.state.log_history`` to ``path`` (PNG) and return the path.

    Args:
        log_history: ``trainer.state.log_history``.
        path: The PNG to write.
        uniform_loss: Loss of uniform targets; default ``ln num_prototypes`` when that is given.
        title: Title of the loss panel (default "<METHOD> pretraining").
        method: The method's display name (``Method.title``: "SOP", "MaSSL" ...): names the titles and legends.
        num_prototypes, prototype_symbol: The method's P and its symbol (``Method.uniform_reference``).
        random_init_knn: k-NN top-1 (a fraction) of the random-init encoder on the monitor's sets; default: the
            ``random_init_knn_top1@k`` value the monitor logged.
        loss_labels: Logged loss terms to draw besides ``loss`` and their labels (``Method.loss_labels``); default:
            every logged ``*_loss`` key under its own name.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key: str):
        points = [(row["step"], row[key]) for row in log_history if key in row and "step" in row]
        return [p[0] for p in points], [p[1] for p in points]

    name = method
    if uniform_loss is None and num_prototypes:
        uniform_loss = math.log(num_prototypes)
    knn_keys = sorted({k for row in log_history for k in row if k.startswith("knn_top1")})
    init_keys = sorted({k for row in log_history for k in row if k.startswith("random_init_knn_top1")})
    if random_init_knn is None and init_keys:
        random_init_knn = next(row[init_keys[0]] for row in log_history if init_keys[0] in row)
    rank_keys = [k for k in ("head_rank", "memory_rank", "effective_rank") if any(k in row for row in log_history)]
    panels = 1 + bool(knn_keys) + bool(rank_keys)
    fig, axes = plt.subplots(1, panels, figsize=(6.2 * panels, 4.2), squeeze=False)
    ax = axes[0, 0]
    if loss_labels is None:
        loss_labels = {k: k for k in sorted({k for row in log_history for k in row}) if k.endswith("_loss")}
    for key, label in {"loss": f"{name} loss (total)", **loss_labels}.items():
        steps, values = series(key)
        if steps:
            ax.plot(steps, values, label=label, linewidth=1.4)
    if uniform_loss is not None:
        p_text = f" = ln {num_prototypes}" if num_prototypes else ""
        ax.axhline(uniform_loss, color="grey", linestyle="--", linewidth=1,
                   label=f"ln {prototype_symbol}{p_text}: uniform targets ({name})")  # fmt: skip
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or f"{name} pretraining")
    column = 1
    if knn_keys:
        ax = axes[0, column]
        column += 1
        for key in knn_keys:
            steps, values = series(key)
            if random_init_knn is not None:  # the curve starts where training starts: the random-init encoder
                steps, values = [0, *steps], [random_init_knn, *values]
            ax.plot(steps, [100 * v for v in values], marker="o", label=f"{name} encoder, {key}")
        if random_init_knn is not None:
            ax.axhline(100 * random_init_knn, color="black", linestyle="--", linewidth=1,
                       label=f"random init ({100 * random_init_knn:.1f}%)")  # fmt: skip
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("k-NN top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"{name}: k-NN monitor (is it learning?)")
    if rank_keys:
        ax = axes[0, column]
        labels = {"head_rank": "head output", "memory_rank": "memory rows", "effective_rank": "backbone [CLS]"}
        for key in rank_keys:
            steps, values = series(key)
            ax.plot(steps, values, marker=".", label=f"effective rank: {labels[key]}")
        ax.set_ylim(bottom=0)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("effective rank (1 = one direction)")
        ax.grid(alpha=0.3)
        steps, values = series("support_similarity")
        if steps:
            twin = ax.twinx()
            twin.plot(steps, values, color="tab:red", linestyle=":", marker="x", label="support-anchor cosine")
            twin.set_ylim(0, 1.02)
            twin.set_ylabel("support-anchor cosine (1 = copies)")
            twin.legend(fontsize=8, loc="lower right")
        ax.legend(fontsize=8, loc="lower left")
        ax.set_title(f"{name}: collapse indicators")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
