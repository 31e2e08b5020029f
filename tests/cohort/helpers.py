"""Synthetic cohorts and the R oracle call shared by the tests of tests/cohort."""
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

from tests import oracles
from vfa.cohort.synth import draw_outcomes

ORACLE = Path(__file__).with_name("survival_r.R")


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


def day_level_cohort(n: int, seed: int) -> pd.DataFrame:
    """time in days (ceil, so no zero), status 0 censored / 1 fracture / 2 death, finding, age, sex:
    a planted subdistribution-like effect of the finding and of age, deaths rising with age."""
    rng = np.random.default_rng(seed)
    finding = (rng.random(n) < 0.3).astype(int)
    age = np.round(rng.normal(72, 7, n), 1)
    sex = (rng.random(n) < 0.7).astype(int)
    fracture = rng.exponential(1 / (0.05 * np.exp(0.6 * finding + 0.03 * (age - 72) + 0.2 * sex)))
    death = rng.exponential(1 / (0.04 * np.exp(0.07 * (age - 72))))
    censor = rng.uniform(0.5, 8, n)
    years = np.minimum.reduce([fracture, death, censor])
    status = np.select([years == fracture, years == death], [1, 2], 0)
    return pd.DataFrame({"time": np.ceil(years * 365.25).astype(int), "status": status, "finding": finding,
                         "age": age, "sex": sex})


def r_oracle(tmp_path, what: str, data: pd.DataFrame, arg: str, *packages: str) -> pd.DataFrame:
    """The table tests/cohort/survival_r.R writes for `what` (cuminc, coxph, uno) on `data`."""
    rscript = oracles.rscript(*packages)
    data.to_csv(tmp_path / f"{what}_in.csv", index=False)
    res = subprocess.run([rscript, str(ORACLE), what, str(tmp_path / f"{what}_in.csv"),
                          str(tmp_path / f"{what}_out.csv"), arg], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return pd.read_csv(tmp_path / f"{what}_out.csv")
