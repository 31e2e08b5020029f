"""Image-level metrics per subgroup of the evaluated images (metrics.json["breakdown"]).

A manifest that carries a `vendor` column (the clinical phantom's, or a site's own) gives each image
its device; the metrics of each vendor's images are those of the whole set (`score_metrics`: DeLong
CI of the AUC, Wilson CIs of Sn and Sp) at the same threshold, so a vendor's row is read like the
overall one. Images the manifest does not list are left out of every group.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from vfa.data.samples import MANIFEST_PATH_COLUMNS, is_manifest, manifest_beside, split_source
from vfa.evaluation.scores import score_metrics

GROUP_COLUMNS = ("vendor",)   # manifest columns an evaluation breaks its metrics down by
# what each group's entry keeps of score_metrics, under the names a reader expects
KEYS = {"n": "n", "auc": "auc", "auc_ci": "auc_ci", "sensitivity": "sn", "sensitivity_ci": "sn_ci",
        "specificity": "sp", "specificity_ci": "sp_ci", "tp": "tp", "fp": "fp", "fn": "fn", "tn": "tn"}


def manifest_of(data: str | Path) -> Path | None:
    """The manifest that lists `data`'s images: the data argument itself, or the one beside a folder."""
    if is_manifest(data):
        return split_source(data)[0]
    return manifest_beside(data) if Path(data).is_dir() else None


def groups_of(paths: list[str], data: str | Path) -> dict[str, list]:
    """Per GROUP_COLUMNS column the manifest has: the value for each path (None where it is not listed)."""
    manifest = manifest_of(data)
    if manifest is None or not manifest.is_file():
        return {}
    try:
        table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError):
        return {}   # the evaluation itself has read its images; a breakdown is optional
    lower = {c.lower(): c for c in table.columns}
    path_col = next((lower[c] for c in MANIFEST_PATH_COLUMNS if c in lower), None)
    wanted = [lower[c] for c in GROUP_COLUMNS if c in lower]
    if path_col is None or not wanted:
        return {}
    root = manifest.parent
    key = {str((Path(p) if Path(p).is_absolute() else root / p).resolve()): i
           for i, p in enumerate(table[path_col].str.strip())}
    rows = [key.get(str(Path(p).resolve())) for p in paths]
    return {col.lower(): [None if r is None or not table[col].iat[r].strip() else table[col].iat[r].strip()
                          for r in rows] for col in wanted}


def breakdown(y, p, threshold: float, groups: dict[str, list]) -> dict:
    """{column: {value: {n, auc, auc_ci, sensitivity, sensitivity_ci, specificity, ...}}} for each
    group column; a value with one class only has AUC None (no ROC) but its Sn or Sp."""
    y, p = np.asarray(y, dtype=int), np.asarray(p, dtype=float)
    out = {}
    for column, values in groups.items():
        v = np.array([x if x is not None else "" for x in values], dtype=object)
        out[column] = {}
        for name in sorted(set(v) - {""}):
            keep = v == name
            m = score_metrics(y[keep], p[keep], threshold)
            entry = {k: m.get(src) for k, src in KEYS.items()}
            entry.update(n_norm=int((y[keep] == 0).sum()), n_frac=int((y[keep] == 1).sum()), notes=m["notes"])
            out[column][name] = entry
    return out


def breakdown_table(bd: dict) -> pd.DataFrame:
    """One row per group (e.g. vendor hologic): n, AUC, Sn and Sp with their CIs, for report.html."""
    def ci(v, lo_hi) -> str:
        ok = v is not None and v == v and lo_hi and None not in lo_hi
        return "n/a" if v is None or v != v else f"{v:.3f} ({lo_hi[0]:.3f}-{lo_hi[1]:.3f})" if ok else f"{v:.3f}"
    return pd.DataFrame([{"group": f"{column} {name}", "n (frac)": f"{g['n']} ({g['n_frac']})",
                          "AUC": ci(g["auc"], g["auc_ci"]), "Sn": ci(g["sensitivity"], g["sensitivity_ci"]),
                          "Sp": ci(g["specificity"], g["specificity_ci"])}
                         for column, rows in bd.items() for name, g in rows.items()])
