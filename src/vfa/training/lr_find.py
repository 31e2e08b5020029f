"""Learning-rate range test (`vfa lr-find`): train a throw-away copy of the model while the rate grows
exponentially, plot the smoothed loss against the rate, suggest the rate of steepest descent.

Two sweeps:
  * per step (default): one rate per batch, 1e-7 -> 1 over N steps (Smith 2017; fastai, Lightning);
  * per epoch (`per_epoch=True`): the notebook's cell, one rate per epoch over the whole folder,
    `1e-10 * 10 ** arange(0, 10, 10 / N)` for N = 50 epochs (the last rate is 10^-0.2, not 1).

It runs on Lightning's Trainer (so accelerator and precision work as in training) with a callback
rather than `Tuner.lr_find`, which fits only the first sweep, keeps only its own smoothed losses and
suggests by the gradient with respect to the rate itself, which on an exponential sweep leans to
the smallest rates; here the slope is taken along log10(rate), the axis that is plotted. Its other
choices are kept: exponential smoothing (beta 0.98, bias-corrected), stop when the smoothed loss
exceeds 4x its best, skip the first 10 and the last point for the suggestion.

The model is always a fresh copy (from the config, or loaded from a checkpoint that is only read):
no saved model, checkpoint or run directory is touched; the run leaves nothing but `out`.
"""
from __future__ import annotations

import copy
import io
import json
import math
import tempfile
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from vfa.config import ConfigError
from vfa.runs import atomic_write, check_out, lock, prepare_run_dir


def schedule(min_lr: float, max_lr: float, n: int, endpoint: bool = True) -> np.ndarray:
    """n rates growing exponentially from min_lr; endpoint=False is the notebook's arange form."""
    if not 0 < min_lr < max_lr or n < 2:
        raise ConfigError(f"need 0 < min_lr < max_lr and at least 2 steps, got {min_lr}, {max_lr}, {n}")
    k = np.arange(n) / ((n - 1) if endpoint else n)
    return min_lr * (max_lr / min_lr) ** k


def smooth(losses, beta: float) -> np.ndarray:
    """Bias-corrected exponential moving average (as fastai and Lightning); beta=0 leaves losses as they are."""
    out, avg = [], 0.0
    for i, v in enumerate(np.asarray(losses, dtype=float)):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta ** (i + 1)))
    return np.asarray(out)


def suggest(lrs, smoothed, skip_begin: int = 10, skip_end: int = 1) -> float | None:
    """The rate where the smoothed loss falls fastest along log10(rate); None with too few points."""
    lrs, loss = np.asarray(lrs, dtype=float), np.asarray(smoothed, dtype=float)
    skip_begin = min(skip_begin, len(lrs) // 10)  # short sweeps (50 epochs) keep most of their points
    sel = np.arange(len(lrs))[skip_begin:len(lrs) - skip_end]
    sel = sel[np.isfinite(loss[sel])]
    if len(sel) < 3:
        return None
    slope = np.gradient(loss[sel], np.log10(lrs[sel]))
    return float(lrs[sel[int(np.argmin(slope))]])


class RangeTest(Callback):
    """Sets the rate before each step (or epoch), records the loss, stops when it diverges."""

    def __init__(self, lrs: np.ndarray, per_epoch: bool, beta: float, early_stop: float | None):
        self.lrs, self.per_epoch, self.beta, self.early_stop = lrs, per_epoch, beta, early_stop
        self.used, self.losses, self.stopped_early = [], [], False
        self._sum, self._n, self._avg, self._best = 0.0, 0, 0.0, math.inf

    def _set(self, trainer, i: int) -> None:
        for group in trainer.optimizers[0].param_groups:
            group["lr"] = float(self.lrs[i])
        self.used.append(float(self.lrs[i]))

    def on_train_epoch_start(self, trainer, pl_module):
        if self.per_epoch:
            self._sum, self._n = 0.0, 0
            self._set(trainer, trainer.current_epoch)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not self.per_epoch:
            self._set(trainer, len(self.losses))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = float((outputs["loss"] if isinstance(outputs, dict) else outputs).detach())
        if self.per_epoch:
            self._sum, self._n = self._sum + loss, self._n + 1
        else:
            self._record(trainer, loss)

    def on_train_epoch_end(self, trainer, pl_module):
        if self.per_epoch and self._n:
            self._record(trainer, self._sum / self._n)

    def _record(self, trainer, loss: float) -> None:
        self.losses.append(loss)
        self._avg = self.beta * self._avg + (1 - self.beta) * loss
        smoothed = self._avg / (1 - self.beta ** len(self.losses))
        diverged = not math.isfinite(loss) or (
            self.early_stop is not None and len(self.losses) > 2 and smoothed > self.early_stop * self._best)
        self._best = min(self._best, smoothed)
        if diverged or len(self.losses) >= len(self.lrs):
            self.stopped_early = diverged and len(self.losses) < len(self.lrs)
            trainer.should_stop = True


def range_test(module: L.LightningModule, loader, lrs: np.ndarray, per_epoch: bool = False, beta: float = 0.98,
               early_stop: float | None = 4.0, accelerator: str = "auto", precision="32-true",
               progress: bool = False) -> dict:
    """Run the sweep on a deep copy of `module` (one optimizer) over `loader`; the original is untouched."""
    module = copy.deepcopy(module)
    test = RangeTest(np.asarray(lrs, dtype=float), per_epoch, beta, early_stop)
    with tempfile.TemporaryDirectory(prefix="vfa-lr-find-") as tmp:
        trainer = L.Trainer(default_root_dir=tmp, accelerator=accelerator, devices=1, precision=precision,
                            max_epochs=len(lrs) if per_epoch else -1, max_steps=-1 if per_epoch else len(lrs),
                            callbacks=[test], logger=False, enable_checkpointing=False, limit_val_batches=0,
                            num_sanity_val_steps=0, enable_model_summary=False, enable_progress_bar=progress)
        trainer.fit(module, train_dataloaders=loader)
    n = len(test.losses)
    smoothed = smooth(test.losses, beta)
    return {"mode": "per-epoch" if per_epoch else "per-step", "lr": test.used[:n], "loss": test.losses,
            "smoothed_loss": smoothed.tolist(), "suggested_lr": suggest(test.used[:n], smoothed),
            "warning": flat_warning(smoothed), "beta": beta, "early_stop": early_stop,
            "stopped_early": test.stopped_early, "planned": len(lrs), "done": n}


def flat_warning(smoothed, min_drop: float = 0.05) -> str | None:
    """A steepest descent exists on any curve; say so when the loss never really fell."""
    loss = np.asarray(smoothed, dtype=float)
    loss = loss[np.isfinite(loss)]
    if len(loss) < 3:
        return None
    start = loss[min(len(loss) // 10, 10)]
    drop = (start - loss[min(len(loss) // 10, 10):].min()) / abs(start) if start else 0.0
    if drop >= min_drop:
        return None
    return (f"the smoothed loss never fell more than {100 * drop:.1f} % below its start: no clear descent, "
            f"the suggestion is unreliable (try more steps, a larger --max-lr, or --set augment=none)")


def plot(result: dict) -> bytes:
    """Smoothed loss versus rate on log axes (raw loss faint), the suggestion marked; PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    lr, loss, sm = (np.asarray(result[k], dtype=float) for k in ("lr", "loss", "smoothed_loss"))
    ax.plot(lr, loss, color="C0", alpha=0.3, lw=1, label="loss")
    ax.plot(lr, sm, color="C0", lw=2, label=f"smoothed (beta {result['beta']})")
    s = result["suggested_lr"]
    if s is not None:
        ax.axvline(s, color="C3", ls="--", lw=1.2, label=f"suggested {s:.2e} (steepest descent)")
    ax.set(xscale="log", yscale="log" if np.all(loss[np.isfinite(loss)] > 0) else "linear",
           xlabel="learning rate", ylabel="training loss",
           title=f"LR range test ({result['mode']}, {result['done']} of {result['planned']} rates"
                 + (", stopped: loss diverged)" if result["stopped_early"] else ")")
                 + ("\nno clear descent: the suggestion is unreliable" if result.get("warning") else ""))
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def lr_find(cfg, train: str | Path, out: str | Path, model: str | Path | torch.nn.Module | None = None,
            overrides: dict | None = None, min_lr: float | None = None, max_lr: float = 1.0, steps: int | None = None,
            per_epoch: bool = False,
            early_stop: float | None = 4.0, beta: float | None = None, force: bool = False,
            progress: bool = True, log=print) -> dict:
    """Range test of `cfg`'s model (fresh, or with weights from `model`) on the images in `train`.
    With `cfg` None, the config is `model`'s checkpoint's, with `overrides` on top.

    Writes out/lr_find.png, lr_find.json (suggested_lr, rates, losses) and lr_find.csv; returns the dict.
    Per step: min_lr 1e-7, 100 steps, beta 0.98. Per epoch (the notebook): 1e-10, 50 epochs, beta 0.8.
    """
    from vfa.models.loading import checkpoint_family
    from vfa.registry import FAMILIES

    family = FAMILIES.of(cfg) if cfg is not None else \
        checkpoint_family(model) if isinstance(model, str | Path) else None
    if family is not None:
        family.refuse("lr-find")  # before the output folder is made
    with lock(out):  # one writer per output folder
        return _lr_find(cfg, train, out, model, overrides, min_lr, max_lr, steps, per_epoch, early_stop, beta, force,
                        progress, log)


def _lr_find(cfg, train, out, model, overrides, min_lr, max_lr, steps, per_epoch, early_stop, beta, force,
             progress, log) -> dict:
    from torch.utils.data import DataLoader

    from vfa import config as config_mod
    from vfa.data.dataset import class_weight, create_dataset
    from vfa.data.samples import load_samples, validate
    from vfa.training.module import VFAModule

    if cfg is None:
        from vfa import checkpoint

        if model is None or isinstance(model, torch.nn.Module):
            raise ConfigError("lr_find needs a config, or a checkpoint path as `model`")
        cfg = checkpoint.config_of(checkpoint.load(model), model)
        config_mod.merge_into(cfg, overrides or {})
        config_mod.check(cfg)
    min_lr = min_lr if min_lr is not None else (1e-10 if per_epoch else 1e-7)
    steps = steps or (50 if per_epoch else 100)
    beta = beta if beta is not None else (0.8 if per_epoch else 0.98)  # 50 epoch means need less smoothing
    if not 0 <= beta < 1:
        raise ConfigError(f"beta must be in [0, 1), got {beta}")
    lrs = schedule(min_lr, max_lr, steps, endpoint=not per_epoch)
    inputs = [train, None if isinstance(model, torch.nn.Module) else model]
    out = check_out(out, inputs)
    samples = validate(load_samples(train, cfg.data.classes, split="train"), cfg.data.on_bad_file, need_classes=(0, 1),
                       frame=cfg.data.frame, min_side=cfg.data.min_side)
    prepare_run_dir(out, force, inputs, "lr-find")
    log(f"lr-find: {len(samples.paths)} images {samples.counts()} from {train}; "
        f"{'one rate per epoch' if per_epoch else 'one rate per step'}, {lrs[0]:.1e} -> {lrs[-1]:.1e}, {steps} rates")
    cfg = copy.deepcopy(cfg)
    cfg.optim.sgdr = False  # the sweep sets every rate itself
    pos_weight = class_weight(samples.labels) if cfg.optim.class_weights else 1.0
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = VFAModule(config_mod.to_dict(cfg), pos_weight)
    if isinstance(model, torch.nn.Module):
        module.model.load_state_dict(model.state_dict())
    elif model is not None:
        from vfa.checkpoint import load, weights_of
        module.model.load_state_dict(weights_of(load(model)))
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # the same sweep whichever way the weights came
    dataset = create_dataset(cfg, samples, train=True)
    loader = DataLoader(dataset, batch_size=cfg.data.batch_size, shuffle=True, num_workers=cfg.data.num_workers,
                        drop_last=False)
    from vfa.training.train import resolve_precision
    result = range_test(module, loader, lrs, per_epoch, beta, early_stop, cfg.trainer.accelerator,
                        resolve_precision(cfg), progress)
    result.update(min_lr=min_lr, max_lr=max_lr, train=str(train), model=str(model) if model is not None else None,
                  augment=cfg.augment, batch_size=cfg.data.batch_size, pos_weight=pos_weight)
    from vfa.runs import json_safe

    atomic_write(out / "lr_find.json", json.dumps(json_safe(result), indent=2))
    rows = "".join(f"{a!r},{b!r},{c!r}\n" for a, b, c in zip(result["lr"], result["loss"], result["smoothed_loss"]))
    atomic_write(out / "lr_find.csv", "lr,loss,smoothed_loss\n" + rows)
    atomic_write(out / "lr_find.png", plot(result))
    s = result["suggested_lr"]
    log(f"suggested learning rate: {s:.3g}" if s is not None else "no suggestion: too few points (more --steps?)")
    if result["warning"]:
        log(f"warning: {result['warning']}")
    if result["stopped_early"]:
        log(f"stopped after {result['done']} of {steps} rates: the loss diverged")
    return result
