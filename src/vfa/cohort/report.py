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
import pandas as pd  # noqa: E402

from vfa.runs import atomic_write  # noqa: E402

_CSS = ("body{font-family:sans-serif;max-width:62em;margin:2em auto;color:#222}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}.warn{color:#a40}")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def km_figure(km_fits: dict, outcome: str, horizon: float) -> bytes:
    from lifelines.plotting import add_at_risk_counts

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for group in (0, 1):
        km_fits[group].plot_survival_function(ax=ax, ci_show=True)
    ax.axvline(horizon, color="gray", ls=":", lw=1)
    ax.set(xlabel="years since the scan", ylabel=f"free of '{outcome}'", title=f"Kaplan–Meier: {outcome}")
    add_at_risk_counts(km_fits[0], km_fits[1], ax=ax, rows_to_show=["At risk"])
    return _png(fig)


def incidence_figure(aj_fits: dict, km_fits: dict, outcome: str, horizon: float) -> bytes:
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for group, color in ((0, "C0"), (1, "C1")):
        aj = aj_fits[group]
        ax.step(aj.cumulative_density_.index, aj.cumulative_density_.iloc[:, 0], where="post", color=color,
                label=f"{aj._label}: Aalen–Johansen")
        km = km_fits[group].survival_function_
        ax.step(km.index, 1 - km.iloc[:, 0], where="post", color=color, ls="--", lw=0.8,
                label=f"{aj._label}: 1 − KM (ignores death; contrast only)")
    ax.axvline(horizon, color="gray", ls=":", lw=1)
    ax.set(xlabel="years since the scan", ylabel="cumulative incidence",
           title=f"Cumulative incidence of '{outcome}', death as a competing risk")
    ax.legend(fontsize=7)
    return _png(fig)


def forest_figure(hr_rows: list[dict]) -> bytes:
    """The finding's and the score's HRs, each row labelled by its "estimate" (Cox HR, Fine–Gray sHR)."""
    rows = [r for r in hr_rows if r["term"] in ("exposure", "score_sd")]
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(rows) + 1.2))
    for i, r in enumerate(rows):
        y = len(rows) - 1 - i
        ax.plot([r["ci_low"], r["ci_high"]], [y, y], color="k")
        ax.plot(r["hr"], y, "s", color="C3" if r.get("estimate", "").startswith("Fine") else "C0")
    labels = [f"{r['outcome']}: {r['term']}, {r['model']}" + (f" ({r['estimate']})" if "estimate" in r else "")
              for r in rows]
    ax.set_yticks(range(len(rows)), labels[::-1], fontsize=8)
    ax.axvline(1, color="gray", lw=1)
    ax.set_xscale("log")
    ax.set(xlabel="hazard ratio (95 % CI, log scale)", title="Hazard ratios: Cox HR (blue), Fine–Gray sHR (red)")
    return _png(fig)


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
    order = ("subjects", "cox", "cumulative_incidence", "c_index", "agreement", "ph_check", "excluded")
    titles = {"subjects": "Who entered the analysis",
              "cox": "Hazard ratios (Cox HR, Efron ties; Fine–Gray sHR, death competing)",
              "cumulative_incidence": "Cumulative incidence at the horizon (Aalen–Johansen)",
              "c_index": "Discrimination (Harrell's C)", "agreement": "Agreement with the reader",
              "ph_check": "Proportional hazards (scaled Schoenfeld residuals)",
              "excluded": "Rows left out"}
    for name in order:
        if name in tables and not tables[name].empty:
            parts += [f"<h2>{titles[name]}</h2>", tables[name].to_html(index=False, float_format=lambda v: f"{v:.4g}")]
            if name == "excluded" and result.get("excluded_more"):
                parts.append(f"<p>... and {result['excluded_more']} more (exclusions.csv)</p>")
    for name, png in figures.items():
        parts.append(f"<h2>{e(name)}</h2><img alt='{e(name)}' src='data:image/png;base64,"
                     f"{base64.b64encode(png).decode('ascii')}'>")
    parts.append(f"<h2>Methods</h2><p>{e(result['methods'])}</p></body></html>")
    atomic_write(path, "\n".join(parts))
