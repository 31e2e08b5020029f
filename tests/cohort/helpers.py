"""Synthetic cohort files shared by the tests of tests/cohort."""
import numpy as np
import pandas as pd

from vfa.cohort.synth import draw_outcomes


def cohort_files(tmp_path, n=3000, hr=1.85, seed=0, prevalence=0.25):
    """pred.csv (random scores, the finding for the top `prevalence`) and out.csv (vfa synth-cohort's
    follow-up with the planted `hr`) in tmp_path."""
    rng = np.random.default_rng(seed)
    p = rng.random(n)
    pred = pd.DataFrame({"image_id": [f"img{i:05d}" for i in range(n)], "raw": p,
                         "predicted": (p >= 1 - prevalence).astype(int)})
    out = pd.concat([pred[["image_id"]], draw_outcomes(pred["predicted"].to_numpy(), hr, seed)], axis=1)
    pred.to_csv(tmp_path / "pred.csv", index=False)
    out.to_csv(tmp_path / "out.csv", index=False)
    return tmp_path / "pred.csv", tmp_path / "out.csv"
