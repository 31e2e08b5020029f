"""Training curves as the notebook drew them: validation Sn, Sp, their average and AUC per epoch; loss.
A per-vertebra run's history (vfa.training.vertebra.HISTORY_KEYS) gets its own validation metrics
and its validation loss: each figure draws the columns its history has."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

# (history column, matplotlib style, legend label)
METRICS = (("sn", "b", "Sn"), ("sp", "r", "Sp"), ("snspavg", "bo", "SnSp Avg"), ("auc", "ro", "AUC"),
           ("val_auc", "ro", "per-vertebra AUC"), ("val_point_error", "g-s", "point error / body height"))


def plot_history(history_csv: str | Path, out_dir: str | Path,
                 loss_label: str = "train loss (weighted BCE)") -> list[Path]:
    history = pd.read_csv(history_csv)
    out_dir = Path(out_dir)
    epochs = history["epoch"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    top = 1.02
    for column, style, label in METRICS:
        if column in history:
            ax.plot(epochs, history[column], style, label=label)
            top = max(top, float(history[column].max()) * 1.05)  # an early point error may exceed 1
    ax.set(xlabel="Epoch", title="Validation results", ylim=(0, top))
    ax.legend(loc="lower right")
    fig.tight_layout()
    metrics_png = out_dir / "curves_metrics.png"
    fig.savefig(metrics_png, dpi=110)
    plt.close(fig)

    fig, ax1 = plt.subplots(figsize=(7, 4.5))
    ax1.plot(epochs, history["train_loss"], "b-o", label=loss_label)
    if "val_loss" in history:
        ax1.plot(epochs, history["val_loss"], "m-s", label="validation loss")
    ax1.set(xlabel="Epoch", ylabel="loss", title="Training loss and learning rate")
    ax2 = ax1.twinx()
    ax2.plot(epochs, history["lr"], "g--", label="learning rate")
    ax2.set_ylabel("learning rate")
    fig.legend(loc="upper right")
    fig.tight_layout()
    loss_png = out_dir / "curves_loss.png"
    fig.savefig(loss_png, dpi=110)
    plt.close(fig)
    return [metrics_png, loss_png]
