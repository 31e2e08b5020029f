"""Training curves as the notebook drew them: validation Sn, Sp, their average and AUC per epoch; loss."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def plot_history(history_csv: str | Path, out_dir: str | Path) -> list[Path]:
    history = pd.read_csv(history_csv)
    out_dir = Path(out_dir)
    epochs = history["epoch"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(epochs, history["sn"], "b", label="Sn")
    ax.plot(epochs, history["sp"], "r", label="Sp")
    ax.plot(epochs, history["snspavg"], "bo", label="SnSp Avg")
    ax.plot(epochs, history["auc"], "ro", label="AUC")
    ax.set(xlabel="Epoch", title="Validation results", ylim=(0, 1.02))
    ax.legend(loc="lower right")
    fig.tight_layout()
    metrics_png = out_dir / "curves_metrics.png"
    fig.savefig(metrics_png, dpi=110)
    plt.close(fig)

    fig, ax1 = plt.subplots(figsize=(7, 4.5))
    ax1.plot(epochs, history["train_loss"], "b-o", label="train loss (weighted BCE)")
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
