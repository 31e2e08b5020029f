"""cv_report.html: a cross-validation on one self-contained page (figures embedded, as report.html)."""
from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from vfa.runs import atomic_write

_CSS = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}")


def _ci(v, ci) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci and None not in ci else "")


def write_report(path: Path, summary: dict, table: pd.DataFrame) -> None:
    e, p = html.escape, summary["pooled"]
    spread = summary["per_fold_mean_sd"]
    shown = table.copy()
    mean = {c: f"{v['mean']:.3f} ± {v['sd']:.3f}" for c, v in spread.items()}
    shown = pd.concat([shown.astype(object), pd.DataFrame([{"fold": "mean ± SD", **mean}])], ignore_index=True)
    pooled = pd.DataFrame([{"measure": name, "value (95 % CI)": _ci(p.get(key), p.get(f"{key}_ci"))}
                           for key, name in (("auc", "AUC"), ("sn", "sensitivity"), ("sp", "specificity"),
                                             ("ppv", "PPV"), ("npv", "NPV"))])
    roc = (Path(path).parent / "cv_roc.png").read_bytes()
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>vfa cross-validation</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>{summary['folds']}-fold cross-validation ({e(str(summary['preset']))})</h1>",
             f"<p>{summary['n_out_of_fold']} out-of-fold predictions, each image scored by the model that did "
             f"not train on it ({e(summary['checkpoint'])} checkpoint of each fold).</p>",
             f"<h2>Pooled out-of-fold (threshold {p['threshold']:.4g}, {e(p['threshold_source'])})</h2>",
             pooled.to_html(index=False),
             "<h2>Per fold</h2><p>Sn/Sp at each fold's own Youden threshold (optimistic: chosen on the fold) "
             "and at the pooled threshold.</p>",
             shown.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep=""),
             "<h2>ROC curves</h2><img alt='out-of-fold ROC curves' src='data:image/png;base64,"
             f"{base64.b64encode(roc).decode('ascii')}'>"]
    test = summary.get("ensemble_test")
    if test:
        parts += ["<h2>Fold ensemble on the held-out test rows</h2>",
                  f"<p>Mean of the {summary['folds']} fold models, pooled out-of-fold threshold "
                  f"{test['threshold']:.4g}; n = {test['n']} ({test['n_frac']} fractured): AUC "
                  f"{_ci(test['auc'], test['auc_ci'])}, Sn {_ci(test['sn'], test['sn_ci'])}, Sp "
                  f"{_ci(test['sp'], test['sp_ci'])}. The full evaluation is in test/report.html.</p>"]
    else:
        parts.append("<p>The manifest has no test rows: the fold ensemble (ensemble.yaml) was not evaluated.</p>")
    atomic_write(path, "\n".join([*parts, "</body></html>"]))
