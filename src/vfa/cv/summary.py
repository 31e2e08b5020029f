"""What a cross-validation reports: out-of-fold predictions for every non-test image, pooled
out-of-fold metrics with CIs, the per-fold table (AUC, and Sn/Sp at the fold's own Youden
threshold and at the pooled one, with mean and SD), the K ROC curves, and the fold ensemble
evaluated once on the held-out test rows (the figure a paper reports): cv_summary.json,
cv_folds.csv, oof_predictions.csv, cv_roc.png, ensemble.yaml, test/ and cv_report.html.

Out-of-fold scores come from each fold's `last` checkpoint by default: `best` is chosen on the
very fold it would then be scored on, which biases its out-of-fold AUC upwards.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from vfa.cv.report import write_report
from vfa.data.samples import Samples, manifest_splits, validate
from vfa.data.split import fold_samples
from vfa.data.stream import default_workers
from vfa.evaluation.evaluate import evaluate, metrics_dict, predictions_frame
from vfa.inference.ensemble import load_ensemble, write_ensemble
from vfa.runs import atomic_write, write_json
from vfa.stats import accuracy as stats
from vfa.stats.metrics import med_metrics

POOLED = "youden on the pooled out-of-fold predictions"


def fold_dir(out: str | Path, k: int) -> Path:
    """Fold k's ordinary run directory."""
    return Path(out) / f"fold{k}"


def out_of_fold(cfg, out: Path, rows: Samples, checkpoint: str, progress: bool, log) -> pd.DataFrame:
    """Every non-test image scored by the model that did not train on it: image_id, file, label, fold, raw."""
    frames = []
    for k in range(cfg.data.folds):
        _, held = fold_samples(rows, k, cfg.data.folds, cfg.data.fold_seed)  # the validation rows training used
        samples = validate(held, cfg.data.on_bad_file, frame=cfg.data.frame, min_side=cfg.data.min_side)
        model = load_ensemble(fold_dir(out, k) / "checkpoints" / f"{checkpoint}.ckpt")
        frame, _ = predictions_frame(model, samples, 0, "auto", 0, 16, default_workers(len(samples.paths), 16),
                                     progress, "auto", None, None)
        frame.insert(3, "fold", k)
        frames.append(frame)
        log(f"fold {k}: {len(frame)} out-of-fold predictions")
    return pd.concat(frames, ignore_index=True)


def fold_table(oof: pd.DataFrame, pooled_threshold: float) -> pd.DataFrame:
    """One row per fold: n, AUC (DeLong CI), Youden threshold with Sn/Sp, Sn/Sp at the pooled threshold."""
    rows = []
    for k, g in oof.groupby("fold", sort=True):
        y, p = g["label"].to_numpy(), g["raw"].to_numpy()
        own = stats.choose_threshold(y, p, "youden")
        at_own, at_pooled = med_metrics(y, p, own, with_curve=False), med_metrics(y, p, pooled_threshold,
                                                                                     with_curve=False)
        ci = stats.delong_ci(y, p)["auc_ci"]
        rows.append({"fold": int(k), "n": len(g), "n_frac": int(y.sum()), "auc": at_own["auc"],
                     "auc_lo": ci[0], "auc_hi": ci[1], "youden_threshold": own, "sn_youden": at_own["sn"],
                     "sp_youden": at_own["sp"], "sn_pooled": at_pooled["sn"], "sp_pooled": at_pooled["sp"]})
    return pd.DataFrame(rows)


def _spread(table: pd.DataFrame) -> dict:
    cols = ["auc", "sn_youden", "sp_youden", "sn_pooled", "sp_pooled"]
    return {c: {"mean": float(table[c].mean()), "sd": float(table[c].std(ddof=1)) if len(table) > 1 else 0.0}
            for c in cols}


def roc_figure(oof: pd.DataFrame) -> bytes:
    import io

    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = plt.subplots(figsize=(5, 5))
    for k, g in oof.groupby("fold", sort=True):
        fpr, tpr, _ = roc_curve(g["label"], g["raw"])
        ax.plot(fpr, tpr, lw=1, alpha=0.7, label=f"fold {k} (AUC {roc_auc_score(g['label'], g['raw']):.3f})")
    fpr, tpr, _ = roc_curve(oof["label"], oof["raw"])
    ax.plot(fpr, tpr, "k", lw=2, label=f"pooled (AUC {roc_auc_score(oof['label'], oof['raw']):.3f})")
    ax.plot([0, 1], [0, 1], ":", color="gray")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="Out-of-fold ROC curves")
    ax.legend(loc="lower right", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def ensemble_test(cfg, out: Path, threshold: float, checkpoint: str, progress: bool, log) -> dict | None:
    """ensemble.yaml of the K fold models (threshold: the pooled out-of-fold Youden one), evaluated
    once on the manifest's `test` rows into OUT/test (None when the manifest has none)."""
    members = [fold_dir(out, k) / "checkpoints" / f"{checkpoint}.ckpt" for k in range(cfg.data.folds)]
    ens = write_ensemble(members, out / "ensemble.yaml", threshold=float(threshold), threshold_source=POOLED,
                         force=True)
    if "test" not in manifest_splits(cfg.data.train):
        log("the manifest has no test rows: the fold ensemble is written but not evaluated")
        return None
    return evaluate(ens, cfg.data.train, out / "test", split="test", threshold="model", force=True,
                    on_bad_file=cfg.data.on_bad_file, progress=progress, log=log)


def summarize(cfg, out: Path, rows: Samples, checkpoint: str = "last", progress: bool = True, log=print) -> dict:
    """Out-of-fold predictions, pooled and per-fold metrics, the ROC figure, the test evaluation of
    the fold ensemble and cv_report.html, all into `out`; returns cv_summary.json's dict."""
    oof = out_of_fold(cfg, out, rows, checkpoint, progress, log)
    y, p = oof["label"].to_numpy(), oof["raw"].to_numpy()
    threshold = stats.choose_threshold(y, p, "youden")
    pooled = metrics_dict(oof, "raw", {"raw": threshold}, POOLED)
    table = fold_table(oof, threshold)
    atomic_write(out / "oof_predictions.csv", oof.to_csv(index=False))
    atomic_write(out / "cv_folds.csv", table.to_csv(index=False))
    atomic_write(out / "cv_roc.png", roc_figure(oof))
    test = ensemble_test(cfg, out, threshold, checkpoint, progress, log)
    summary = {"folds": cfg.data.folds, "preset": cfg.preset, "checkpoint": checkpoint, "n_out_of_fold": len(oof),
               "pooled": {k: v for k, v in pooled.items() if k not in ("scores", "operating_points")},
               "per_fold": table.to_dict(orient="records"), "per_fold_mean_sd": _spread(table),
               "ensemble_test": None if test is None else {k: test[k] for k in (
                   "auc", "auc_ci", "sn", "sn_ci", "sp", "sp_ci", "threshold", "n", "n_frac")}}
    write_json(out / "cv_summary.json", summary)
    write_report(out / "cv_report.html", summary, table)
    a = summary["per_fold_mean_sd"]["auc"]
    log(f"{cfg.data.folds}-fold CV: pooled out-of-fold AUC {pooled['auc']:.3f} ({pooled['auc_ci'][0]:.3f}-"
        f"{pooled['auc_ci'][1]:.3f}), per fold {a['mean']:.3f} ± {a['sd']:.3f}"
        + (f"; fold ensemble on the test rows: AUC {test['auc']:.3f} ({test['auc_ci'][0]:.3f}-"
           f"{test['auc_ci'][1]:.3f})" if test else ""))
    log(f"wrote cv_report.html, cv_summary.json, cv_folds.csv, oof_predictions.csv and ensemble.yaml to {out}; "
        f"open {out / 'cv_report.html'} in a browser")
    return summary
