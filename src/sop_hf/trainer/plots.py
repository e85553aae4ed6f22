"""Training curves as a PNG (matplotlib's Agg backend: no display, no browser).

``plot_training_curves(log_history, path)`` draws the total, SOP and SOP-MIM losses against the optimizer step, with
``ln P'`` as the collapse reference when given, and the k-NN top-1 curve on a second panel when the history has one.
"""

from pathlib import Path


def plot_training_curves(
    log_history: list[dict], path: str | Path, uniform_loss: float | None = None, title: str | None = None
) -> Path:
    """Write the curves of ``trainer.state.log_history`` to ``path`` (PNG) and return the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key: str):
        points = [(row["step"], row[key]) for row in log_history if key in row and "step" in row]
        return [p[0] for p in points], [p[1] for p in points]

    knn_keys = sorted({k for row in log_history for k in row if k.startswith("knn_top1")})
    panels = 2 if knn_keys else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.2), squeeze=False)
    ax = axes[0, 0]
    for key, label in (("loss", "total loss"), ("sop_loss", "SOP [CLS] loss"), ("mim_loss", "SOP-MIM patch loss")):
        steps, values = series(key)
        if steps:
            ax.plot(steps, values, label=label, linewidth=1.4)
    if uniform_loss is not None:
        ax.axhline(uniform_loss, color="grey", linestyle="--", linewidth=1, label="ln P' (uniform / collapse)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "SOP pretraining")
    if knn_keys:
        ax = axes[0, 1]
        for key in knn_keys:
            steps, values = series(key)
            ax.plot(steps, [100 * v for v in values], marker="o", label=key)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("k-NN top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title("k-NN monitor")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
