"""The cohort outputs: figures (km.png, cumulative_incidence.png, forest.png), cohort.xlsx and a
self-contained cohort_report.html in the style of the evaluation report."""
from __future__ import annotations

import base64
import datetime
import html
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from vfa.runs import atomic_write  # noqa: E402

_CSS = ("body{font-family:sans-serif;max-width:62em;margin:2em auto;color:#222}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}.warn{color:#a40}")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def outcome_label(outcome: str) -> str:
    """The outcome in words: its code 1 is a fracture (code 2 death); the column name says which kind,
    except the default column 'event'."""
    return "fracture" if outcome == "event" else f"fracture ('{outcome}')"


def km_figure(km_fits: dict, outcome: str, horizon: float) -> bytes:
    from lifelines.plotting import add_at_risk_counts

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for group in (0, 1):
        km_fits[group].plot_survival_function(ax=ax, ci_show=True)
    ax.axvline(horizon, color="gray", ls=":", lw=1)
    ax.set(xlabel="years since the scan", ylabel=f"probability free of {outcome_label(outcome)}",
           title=f"Kaplan–Meier: free of {outcome_label(outcome)} (deaths censored)")
    add_at_risk_counts(km_fits[0], km_fits[1], ax=ax, rows_to_show=["At risk"])
    return _png(fig)


def incidence_figure(aj: dict, km: dict, outcome: str, horizon: float, by: str, contrast: bool = False) -> bytes:
    """Aalen–Johansen curves {label: Incidence} with the numbers at risk of each group under the plot
    (lifelines' add_at_risk_counts, from the groups' Kaplan–Meier fits {label: fitter}); `contrast`:
    1 − KM beside each curve, dashed (it ignores death: a contrast, not an estimate)."""
    from lifelines.plotting import add_at_risk_counts

    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    for k, (label, est) in enumerate(aj.items()):
        ax.step(est.time, est.estimate, where="post", color=f"C{k}", label=f"{label}: Aalen–Johansen")
        if contrast:
            surv = km[label].survival_function_
            ax.step(surv.index, 1 - surv.iloc[:, 0], where="post", color=f"C{k}", ls="--", lw=0.8,
                    label=f"{label}: 1 − KM (ignores death; contrast only)")
    ax.axvline(horizon, color="gray", ls=":", lw=1)
    ax.set(xlabel="years since the scan", ylabel="cumulative incidence",
           title=f"Cumulative incidence of {outcome_label(outcome)} by {by}, death competing")
    ax.legend(fontsize=7)
    add_at_risk_counts(*km.values(), ax=ax, rows_to_show=["At risk"])
    return _png(fig)


def forest_label(r: dict) -> str:
    """A row of the forest plot named by its model's terms: the two adjusted models differ by the first."""
    first, *rest = r["terms"].split(" + ")
    model = f"adjusted for {', '.join(rest)}" if rest else "unadjusted"
    return f"{r['outcome']}: {first}, {model}" + (f" ({r['estimate']})" if "estimate" in r else "")


def forest_figure(hr_rows: list[dict]) -> bytes:
    """The finding's and the score's HRs, each row labelled by its model's terms and its "estimate"
    (Cox HR, Fine–Gray sHR); a model that is not estimable is a row that says so, with no point."""
    rows = [r for r in hr_rows if r["term"] in ("exposure", "score_sd")]
    # each outcome's models together, the Cox HR and the sHR of a model on adjacent lines
    outcomes = list(dict.fromkeys(r["outcome"] for r in rows))
    models = list(dict.fromkeys(r["terms"] for r in rows))
    rows.sort(key=lambda r: (outcomes.index(r["outcome"]), models.index(r["terms"])))
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(rows) + 1.2))
    for i, r in enumerate(rows):
        y = len(rows) - 1 - i
        if r["hr"] is None:
            ax.text(1, y, "not estimable (see the table)", ha="center", va="center", fontsize=8, color="gray",
                    bbox={"fc": "white", "ec": "none"})
            continue
        ax.plot([r["ci_low"], r["ci_high"]], [y, y], color="k")
        ax.plot(r["hr"], y, "s", color="C3" if r.get("estimate", "").startswith("Fine") else "C0")
    ax.set_yticks(range(len(rows)), [forest_label(r) for r in rows][::-1], fontsize=8)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.axvline(1, color="gray", lw=1)
    ax.set_xscale("log")
    _plain_ticks(ax, [v for r in rows if r["hr"] is not None for v in (r["ci_low"], r["ci_high"])])
    ax.set(xlabel="hazard ratio (95 % CI, log scale)", title="Hazard ratios: Cox HR (blue), Fine–Gray sHR (red)")
    return _png(fig)


def _plain_ticks(ax, values: list[float]) -> None:
    """Ticks at powers of 2 read as plain numbers (0.5, 1, 2, 4), not matplotlib's 10^0, 2x10^0."""
    from matplotlib.ticker import FixedLocator, NullLocator

    lo, hi = min([1.0, *values]), max([1.0, *values])
    k_lo, k_hi = np.floor(np.log2(lo)), np.ceil(np.log2(hi))
    step = max(1.0, np.ceil((k_hi - k_lo + 1) / 9))  # at most about 9 ticks on a wide CI, 1 always one
    ticks = 2.0 ** np.arange(np.floor(k_lo / step) * step, np.ceil(k_hi / step) * step + 1, step)
    ax.set_xlim(ticks[0] / 1.1, max(ticks[-1], hi) * 1.1)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{v:g}" for v in ticks])


ADDED_VALUE_NOTE = ("Each row is a Cox model on the same patients; differences (Δ) are from the base model, with "
                    "paired bootstrap 95 % CIs (the same resampled patients for both models). Uno's C: pairs whose "
                    "earlier time is before the horizon, weighted by the inverse squared probability of still being "
                    "followed. AUC: cumulative/dynamic at the horizon. LR: likelihood-ratio test against the base "
                    "model (1 df). NRI: categorical net reclassification at the risk cut-offs, events + non-events "
                    "(subjects censored before the horizon left out). cohort.json and cohort.xlsx have every figure.")


def _with_ci(r: dict, key: str, digits: int = 3) -> str:
    if r.get(key) is None:
        return ""
    lo, hi = r.get(f"{key}_ci_low"), r.get(f"{key}_ci_high")
    ci = f" ({lo:.{digits}f} to {hi:.{digits}f})" if lo is not None and hi is not None else ""
    return f"{r[key]:.{digits}f}{ci}"


def added_value_table(rows: list[dict]) -> pd.DataFrame:
    """The added-value rows as the report shows them: each figure with its CI in one cell."""
    out = []
    for r in rows:
        horizon = f"{r['horizon']:g}"
        lr = "" if r["lr_chi2"] is None else f"{r['lr_chi2']:.1f} (p {r['lr_p']:.2g})"
        out.append({"outcome": r["outcome"], "model": r["model"], "Harrell's C": _with_ci(r, "harrell_c"),
                    "Δ Harrell's C": _with_ci(r, "delta_harrell_c"), "Uno's C": _with_ci(r, "uno_c"),
                    "Δ Uno's C": _with_ci(r, "delta_uno_c"), f"AUC at {horizon} y": _with_ci(r, "auc"),
                    "Δ AUC": _with_ci(r, "delta_auc"), "LR χ² (1 df)": lr,
                    f"NRI at {r['risk_cuts']}": _with_ci(r, "nri"), "not estimable": r["not_estimable"] or ""})
    return pd.DataFrame(out)


def write_excel(path: Path, tables: dict[str, pd.DataFrame]) -> None:
    buf = io.BytesIO()
    with pd.ExcelWriter(buf, engine="openpyxl") as xl:
        for name, table in tables.items():
            table.to_excel(xl, sheet_name=name[:31], index=False)
    atomic_write(path, buf.getvalue())


def write_html(path: Path, result: dict, tables: dict[str, pd.DataFrame], figures: dict[str, bytes]) -> None:
    e = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>vfa cohort</title><style>{_CSS}</style>"
             "</head><body><h1>Cohort analysis: does the model's finding predict the next fracture?</h1>",
             f"<p>Generated {e(datetime.datetime.now().isoformat(timespec='seconds'))} by vfa. Exposure: "
             f"{e(result['exposure_text'])}. {result['n']} subjects analysed.</p>"]
    for w in result.get("warnings", []):
        parts.append(f"<p class='warn'>Warning: {e(w)}</p>")
    order = ("subjects", "cox", "cumulative_incidence", "c_index", "added_value", "agreement", "ph_check", "excluded")
    titles = {"subjects": "Who entered the analysis",
              "cox": "Hazard ratios (Cox HR, Efron ties; Fine–Gray sHR, death competing)",
              "cumulative_incidence": "Cumulative incidence at the horizon (Aalen–Johansen)",
              "c_index": "Discrimination (Harrell's C)", "agreement": "Agreement with the reader",
              "added_value": "Added value over the clinical model (--base)",
              "ph_check": "Proportional hazards (scaled Schoenfeld residuals)",
              "excluded": "Rows left out"}
    for name in order:
        if name in tables and not tables[name].empty:
            table = added_value_table(result["added_value"]) if name == "added_value" else tables[name]
            parts += [f"<h2>{titles[name]}</h2>", table.to_html(index=False, na_rep="",
                                                             float_format=lambda v: f"{v:.4g}")]
            if name == "added_value":
                parts.append(f"<p>{e(ADDED_VALUE_NOTE)}</p>")
            if name == "excluded" and result.get("excluded_more"):
                parts.append(f"<p>... and {result['excluded_more']} more (exclusions.csv)</p>")
    for name, png in figures.items():
        parts.append(f"<h2>{e(name)}</h2><img alt='{e(name)}' src='data:image/png;base64,"
                     f"{base64.b64encode(png).decode('ascii')}'>")
    parts.append(f"<h2>Methods</h2><p>{e(result['methods'])}</p></body></html>")
    atomic_write(path, "\n".join(parts))
