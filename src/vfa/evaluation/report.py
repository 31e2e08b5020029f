"""Evaluation outputs: figures, the notebook's Excel sheet and .npy set, and a self-contained report.html.

`report.html` embeds every figure as a base64 PNG and every table as HTML, so it opens from a
mail attachment or a file share with no server and no other files.
"""
from __future__ import annotations

import base64
import datetime
import html
import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from vfa.runs import atomic_write  # noqa: E402
from vfa.stats import accuracy as stats  # noqa: E402

LABELS = {"raw": "raw", "tta_mean": "TTA mean", "tta_max": "TTA max"}
COLORS = {"raw": "C0", "tta_mean": "C1", "tta_max": "C2"}
# The notebook's Excel columns (its "Export results to Microsoft Excel" cell).
NOTEBOOK_COLUMNS = {"image_id": "filenames", "label": "labels", "raw": "raw predictions",
                    "tta_max": "max augmented predictions", "tta_mean": "mean augmented predictions"}
# metric key, display name, interval method
METRIC_ROWS = (("auc", "AUC", "DeLong"), ("sn", "Sensitivity", "Wilson"), ("sp", "Specificity", "Wilson"),
               ("snspavg", "(Sn + Sp) / 2", ""), ("ppv", "PPV", "Wilson"), ("npv", "NPV", "Wilson"),
               ("plr", "LR+", "log (Simel 1991)"), ("nlr", "LR-", "log (Simel 1991)"),
               ("acc", "Accuracy", "Wilson"), ("brier", "Brier score", ""), ("ece", "ECE", ""))


def scores_in(frame: pd.DataFrame) -> list[str]:
    return [s for s in LABELS if s in frame.columns]


# --- figures -----------------------------------------------------------------------------------

def roc_band(y, p, n_boot: int = 200, seed: int = 0, grid: np.ndarray | None = None):
    """Pointwise 95 % band of TPR over an FPR grid by stratified bootstrap (as pROC's ci.se)."""
    y, p = np.asarray(y).astype(int), np.asarray(p, dtype=float)
    grid = np.linspace(0, 1, 101) if grid is None else grid
    pos, neg = p[y == 1], p[y == 0]
    rng = np.random.default_rng(seed)
    curves = np.empty((n_boot, grid.size))
    for b in range(n_boot):
        pb, nb = rng.choice(pos, pos.size), rng.choice(neg, neg.size)
        fpr, tpr, _ = roc_curve(np.r_[np.ones(pos.size), np.zeros(neg.size)], np.r_[pb, nb])
        curves[b] = np.interp(grid, fpr, tpr)
    return grid, np.percentile(curves, 2.5, axis=0), np.percentile(curves, 97.5, axis=0)


def _fmt_ci(v, ci, digits: int = 3) -> str:
    def f(x):
        return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else (
            "inf" if x in (math.inf, "inf") else f"{float(x):.{digits}f}")
    if ci is None or any(c is None or (isinstance(c, float) and math.isnan(c)) for c in ci):
        return f(v)
    return f"{f(v)} ({f(ci[0])}-{f(ci[1])})"


def fig_roc(frame: pd.DataFrame, results: dict):
    fig, ax = plt.subplots(figsize=(5.5, 5))
    y = frame["label"].to_numpy()
    if len(np.unique(y)) < 2:
        ax.text(0.5, 0.5, "ROC undefined: single-class set", ha="center")
    else:
        for s in scores_in(frame):
            p = frame[s].to_numpy()
            fpr, tpr, _ = roc_curve(y, p)
            grid, lo, hi = roc_band(y, p)
            m = results["scores"][s]
            ax.fill_between(grid, lo, hi, color=COLORS[s], alpha=0.15, lw=0)
            ax.plot(fpr, tpr, color=COLORS[s], lw=2, label=f"{LABELS[s]}: AUC {_fmt_ci(m['auc'], m.get('auc_ci'))}")
        ax.legend(loc="lower right", fontsize=8, title="AUC (95% CI, DeLong); band: bootstrap 95%",
                  title_fontsize=7)
    ax.plot([0, 1], [0, 1], color="gray", lw=1, ls="--")
    ax.set(xlim=(0, 1), ylim=(0, 1.05), xlabel="False Positive Rate", ylabel="True Positive Rate",
           title="Receiver operating characteristic")
    return fig


def fig_confusion(frame: pd.DataFrame, results: dict):
    scores = scores_in(frame)
    fig, axes = plt.subplots(1, len(scores), figsize=(3.6 * len(scores), 3.4), squeeze=False)
    for ax, s in zip(axes[0], scores):
        m = results["scores"][s]
        cm = np.array([[m["tn"], m["fp"]], [m["fn"], m["tp"]]])
        ax.imshow(cm, cmap="Blues")
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
        ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["norm", "frac"], yticklabels=["norm", "frac"],
               xlabel="predicted", ylabel="true", title=f"{LABELS[s]} @ {m['threshold']:.3g}")
    fig.tight_layout()
    return fig


def fig_sn_sp(frame: pd.DataFrame, results: dict):
    s = results["score"]
    y, p = frame["label"].to_numpy().astype(int), frame[s].to_numpy()
    t = np.linspace(0, 1, 201)
    points = stats.operating_points(y, p, t)
    sn, sp = np.array([r["sn"] for r in points]), np.array([r["sp"] for r in points])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(t, sn, "b", label="Sensitivity")
    ax.plot(t, sp, "r", label="Specificity")
    ax.axvline(results["scores"][s]["threshold"], color="k", ls="--", lw=1, label="chosen threshold")
    ax.set(xlabel=f"threshold on P(fracture) ({LABELS[s]})", ylabel="sensitivity / specificity (share of images)",
           ylim=(0, 1.02), title="Sn and Sp versus threshold")
    ax.legend(loc="center right", fontsize=8)
    fig.tight_layout()
    return fig


def reliability_bins(y, p, n_bins: int | None = None) -> list[dict]:
    """Quantile bins of the scores p, each {n, mean_p, observed, ci} (observed: the share of y = 1,
    ci its Wilson 95 % interval). About 15 images a bin, 3 to 10 bins: equal-width bins on a small
    set hold 1-3 images each and the curve zig-zags on noise. Tied scores can merge bins."""
    y, p = np.asarray(y, dtype=int), np.asarray(p, dtype=float)
    if not len(p):
        return []
    if n_bins is None:
        n_bins = min(10, max(3, len(p) // 15))
    n_bins = max(1, min(n_bins, len(p)))
    edges = np.quantile(p, np.linspace(0, 1, n_bins + 1))
    ids = np.searchsorted(edges[1:-1], p)  # as scikit-learn's calibration_curve(strategy="quantile")
    out = []
    for b in range(n_bins):
        sel = ids == b
        if sel.any():
            k, n = int(y[sel].sum()), int(sel.sum())
            out.append({"n": n, "mean_p": float(p[sel].mean()), "observed": k / n, "ci": stats.wilson(k, n)})
    return out


def fig_reliability(frame: pd.DataFrame, results: dict, n_bins: int | None = None):
    fig, (ax, axh) = plt.subplots(2, 1, figsize=(5.5, 6.6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="gray", ls="--", lw=1, label="perfect calibration")
    y = frame["label"].to_numpy().astype(int)
    primary = results.get("score", "raw")
    for s in scores_in(frame):
        p = frame[s].to_numpy()
        bins = reliability_bins(y, p, n_bins)
        x, obs = [b["mean_p"] for b in bins], [b["observed"] for b in bins]
        c = results["scores"][s]
        label = f"{LABELS[s]}: Brier {c['brier']:.3f}, ECE {c['ece']:.3f}"
        if s == primary:  # its bins' Wilson CIs and counts; the other scores' bins hold as many images
            err = np.clip([[b["observed"] - b["ci"][0], b["ci"][1] - b["observed"]] for b in bins], 0, None).T
            ax.errorbar(x, obs, yerr=err, fmt="o-", color=COLORS[s], capsize=3, label=label + " (bars: Wilson 95 %)")
            counts = {b["n"] for b in bins}
            for b in bins if max(counts) - min(counts) > 1 else []:  # equal counts: said once, in the title
                ax.annotate(f"{b['n']}", (b["mean_p"], b["observed"]), textcoords="offset points", xytext=(5, -11),
                            fontsize=7, color=COLORS[s])
        else:
            ax.plot(x, obs, "o-", color=COLORS[s], ms=4, lw=1, alpha=0.8, label=label)
        axh.hist(p, bins=np.linspace(0, 1, 11), histtype="step", color=COLORS[s])
    bins = reliability_bins(y, frame[primary].to_numpy(), n_bins) if primary in frame else []
    counts = sorted({b["n"] for b in bins}) or [0]
    per_bin = (f"{counts[0]} images each" if len(counts) == 1 else f"{counts[0]}-{counts[-1]} images each"
               if counts[-1] - counts[0] <= 1 else "images per bin beside each point")
    ax.set(ylabel="observed fraction of fractures", ylim=(-0.02, 1.02),
           title=f"Reliability diagram: {len(bins)} bins of equal counts ({per_bin})")
    ax.title.set_fontsize(9)
    axh.set(xlabel="predicted P(fracture), mean of the bin", ylabel="images per 0.1", xlim=(0, 1))
    axh.yaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
    # below the plots: inside, the legend covered the points of a small set
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", fontsize=7,
               title="ECE: 10 equal-width bins", title_fontsize=7)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    return fig


FIGURES = {"roc": fig_roc, "confusion_matrix": fig_confusion, "sn_sp_threshold": fig_sn_sp,
           "reliability": fig_reliability}


def render_figures(frame: pd.DataFrame, results: dict) -> dict[str, bytes]:
    out = {}
    for name, make in FIGURES.items():
        fig = make(frame, results)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        out[name] = buf.getvalue()
    return out


# --- tables ------------------------------------------------------------------------------------

def metrics_table(results: dict) -> pd.DataFrame:
    rows = []
    for s, m in results["scores"].items():
        for key, name, method in METRIC_ROWS:
            ci = m.get(f"{key}_ci") or (None, None)
            rows.append({"score": s, "metric": name, "value": _num(m.get(key)), "ci_low": _num(ci[0]),
                         "ci_high": _num(ci[1]), "ci_method": method if ci[0] is not None else ""})
        for key in ("threshold", "tp", "fp", "fn", "tn", "n"):
            rows.append({"score": s, "metric": key, "value": _num(m[key]), "ci_low": None, "ci_high": None,
                         "ci_method": ""})
    return pd.DataFrame(rows)


def _num(v):
    return math.inf if v == "inf" else v


def operating_table(results: dict) -> pd.DataFrame:
    return pd.DataFrame([{"score": s, **row} for s, rows in results["operating_points"].items() for row in rows])


def notebook_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The notebook's Excel columns (those present), then the class at the chosen threshold."""
    cols = [c for c in NOTEBOOK_COLUMNS if c in frame.columns]
    out = frame[cols].rename(columns=NOTEBOOK_COLUMNS)
    out["predicted class"] = frame["predicted"].to_numpy()
    return out


def write_excel(path: Path, frame: pd.DataFrame, results: dict, info: dict) -> None:
    buf = io.BytesIO()
    with pd.ExcelWriter(buf, engine="openpyxl") as xw:
        notebook_frame(frame).to_excel(xw, sheet_name="predictions", index=False)
        metrics_table(results).to_excel(xw, sheet_name="metrics", index=False)
        operating_table(results).to_excel(xw, sheet_name="operating points", index=False)
        pd.DataFrame(list(info.items()), columns=["item", "value"]).to_excel(xw, sheet_name="info", index=False)
    atomic_write(path, buf.getvalue())


def write_npy(out: Path, frame: pd.DataFrame) -> list[Path]:
    """The notebook's saved arrays; test_preds keeps its (N, 1) predict_generator shape.
    The TTA arrays are written only when TTA ran."""
    arrays = {"test_fnames": frame["file"].to_numpy().astype(str),
              "test_classes": frame["label"].to_numpy().astype(np.int32),
              "test_preds": frame["raw"].to_numpy().astype(np.float32).reshape(-1, 1)}
    if "tta_max" in frame:
        arrays["test_max_preds"] = frame["tta_max"].to_numpy().astype(np.float64)
        arrays["test_mean_preds"] = frame["tta_mean"].to_numpy().astype(np.float64)
    paths = []
    for name, arr in arrays.items():
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        atomic_write(out / f"{name}.npy", buf.getvalue())
        paths.append(out / f"{name}.npy")
    return paths


# --- HTML --------------------------------------------------------------------------------------

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}.note{color:#a40}"""


def summary_table(results: dict) -> pd.DataFrame:
    rows = {}
    for key, name, _ in METRIC_ROWS:
        rows[name] = {LABELS[s]: _fmt_ci(m.get(key), m.get(f"{key}_ci")) for s, m in results["scores"].items()}
    rows["Threshold"] = {LABELS[s]: f"{m['threshold']:.4g}" for s, m in results["scores"].items()}
    rows["TP / FP / FN / TN"] = {LABELS[s]: f"{m['tp']} / {m['fp']} / {m['fn']} / {m['tn']}"
                                 for s, m in results["scores"].items()}
    return pd.DataFrame(rows).T


def localization_table(loc: dict) -> pd.DataFrame:
    ci = loc.get("pointing_game_ci") or (None, None)
    return pd.DataFrame([
        {"measure": "pointing game", "value": _fmt_ci(loc.get("pointing_game"), ci),
         "images": f"{loc.get('pointing_hits')} of {loc.get('n_fractured')} fractured"},
        {"measure": "pointing game, within 15 px of the box (Zhang et al. 2018)",
         "value": _fmt_ci(loc.get("pointing_game_tol15px"), loc.get("pointing_game_tol15px_ci") or (None, None)),
         "images": loc.get("n_fractured")},
        {"measure": "heatmap mass inside fractured boxes (mean)", "value": _fmt_ci(loc.get("mass_in_boxes"), None),
         "images": loc.get("n_fractured")}])


def write_html(path: Path, figures: dict[str, bytes], frame: pd.DataFrame, results: dict, info: dict,
               gallery: bytes | None = None) -> None:
    e = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>vfa evaluation</title>"
             f"<style>{CSS}</style></head><body>",
             "<h1>Vertebral fracture detection: evaluation report</h1>",
             f"<p>Generated {e(datetime.datetime.now().isoformat(timespec='seconds'))} by vfa.</p>",
             "<h2>Setup</h2>", pd.DataFrame(list(info.items()), columns=["item", "value"]).to_html(index=False),
             "<h2>Diagnostic accuracy (95 % CI)</h2>", summary_table(results).to_html(),
             "<p>Intervals: Wilson score (Sn, Sp, PPV, NPV, accuracy), log method (likelihood ratios), "
             "DeLong (AUC). LR- = (1 - Sn) / Sp.</p>"]
    if results.get("breakdown"):   # e.g. per vendor, from the manifest's vendor column
        from vfa.evaluation.breakdown import breakdown_table
        parts += ["<h2>By subgroup (95 % CI, the same threshold)</h2>",
                  breakdown_table(results["breakdown"]).to_html(index=False)]
    notes = {n for m in results["scores"].values() for n in m.get("notes", [])}
    if notes:
        parts.append("<ul>" + "".join(f"<li class='note'>{e(n)}</li>" for n in sorted(notes)) + "</ul>")
    titles = {"roc": "ROC curve", "confusion_matrix": "Confusion matrix", "sn_sp_threshold":
              "Sensitivity and specificity versus threshold", "reliability": "Calibration"}
    for name, png in figures.items():
        b64 = base64.b64encode(png).decode("ascii")
        parts.append(f"<h2>{e(titles.get(name, name))}</h2><img id='fig-{e(name)}' alt='{e(name)}' "
                     f"src='data:image/png;base64,{b64}'>")
    if results.get("localization"):
        loc = results["localization"]
        from vfa.explain.cam import METHOD_NAMES

        method = METHOD_NAMES.get(loc.get("method", "gradcam"), str(loc.get("method")))
        layer = loc.get("layer") or "auto"
        where = "the last feature map" if layer == "auto" else layer
        parts += [f"<h2>Localization ({e(method)})</h2>", localization_table(loc).to_html(index=False),
                  f"<p>{e(loc.get('definition', ''))} Method: {e(method)} on {e(where)}.</p>"]
    if gallery:
        parts.append("<h2>Heatmaps</h2><img id='fig-heatmap_gallery' alt='heatmap gallery' "
                     f"src='data:image/png;base64,{base64.b64encode(gallery).decode('ascii')}'>")
    parts += ["<h2>Operating points</h2>", operating_table(results).to_html(index=False, float_format="%.3f"),
              f"<h2>Predictions</h2><details><summary>{len(frame)} images</summary>",
              frame.drop(columns=["file"]).to_html(index=False, float_format="%.4f"), "</details>",
              "</body></html>"]
    atomic_write(path, "\n".join(parts))


def write_all(out: Path, frame: pd.DataFrame, results: dict, info: dict,
              gallery: bytes | None = None) -> dict[str, Path]:
    """Figures (PNG), final_results.xlsx, the .npy set and report.html into `out`
    (with `gallery`, a heatmap gallery PNG: heatmap_gallery.png, also in the report)."""
    out = Path(out)
    figures = render_figures(frame, results)
    written = {}
    for name, png in figures.items():
        atomic_write(out / f"{name}.png", png)
        written[name] = out / f"{name}.png"
    write_excel(out / "final_results.xlsx", frame, results, info)
    write_npy(out, frame)
    if gallery:
        atomic_write(out / "heatmap_gallery.png", gallery)
        written["heatmap_gallery"] = out / "heatmap_gallery.png"
    write_html(out / "report.html", figures, frame, results, info, gallery)
    written.update(excel=out / "final_results.xlsx", html=out / "report.html")
    return written
