"""Image-level metrics at one threshold with their confidence intervals, and the first columns of
the predictions table: one definition for the image-level and the per-vertebra evaluations."""
from __future__ import annotations

import numpy as np
import pandas as pd

from vfa.inference.predict import image_ids
from vfa.io.identifiers import public_path
from vfa.stats import accuracy as stats
from vfa.stats.metrics import fractions, med_metrics, scalars


def score_metrics(y, p, threshold: float, n_bins: int = 10) -> dict:
    """`med_metrics` at `threshold` plus Wilson / log-method / DeLong 95 % CIs, Brier and ECE."""
    md = med_metrics(y, p, threshold, with_curve=False)
    m = {**scalars(md), "threshold": float(threshold)}
    for key, (k, total) in fractions(m).items():
        m[f"{key}_ci"] = stats.wilson(k, total)
    lr = stats.likelihood_ratios(m["tp"], m["fp"], m["fn"], m["tn"])
    m["plr_ci"], m["nlr_ci"] = lr["plr_ci"], lr["nlr_ci"]
    dl = stats.delong_ci(y, p)
    m["auc_ci"], m["auc_se"] = dl["auc_ci"], dl["auc_se"]
    m.update(stats.calibration(y, p, n_bins))
    m["notes"] = list(dict.fromkeys(md["notes"] + lr["notes"] + dl["notes"]))
    return m


def labelled_frame(samples, id_regex: str | None, id_column: str | None, keep_identifiers: bool) -> pd.DataFrame:
    """(image_id, file, label) of labelled `samples`, the first columns of every family's
    evaluation predictions.csv: IDs from a manifest's `id_column`, else the relative path (or its
    `id_regex` match); DICOM UIDs in file names hashed unless `keep_identifiers`."""
    rel = samples.rel_paths()
    return pd.DataFrame({"image_id": samples.ids() if id_column else image_ids(rel, None, id_regex, keep_identifiers),
                         "file": rel if keep_identifiers else [public_path(r) for r in rel],
                         "label": np.asarray(samples.labels, dtype=int)})
