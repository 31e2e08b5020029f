"""`vfa synth-cohort`: follow-up for the images of a predictions file, with a known hazard ratio.

For each row: covariates correlated with the model finding (exposed patients are older, more often
female, with lower BMD, more often a prior fracture), a Weibull time to the fracture outcome whose
hazard ratio for the finding, given the covariates, is `hr`, a competing death (its hazard rising
with age), and administrative censoring (uniform accrual over `accrual` years, study end at `study`
years). The Cox model adjusted for all five covariates recovers `hr`; the unadjusted one is
confounded by them, as in a registry.

The covariates are the FRAX inputs a registry holds, with these planted log hazard ratios of the
fracture outcome (the same in every draw):

| column | distribution | log HR |
|---|---|---|
| age | normal(72, 7) years, + 4 if the finding | log(1.5) per 10 years |
| sex | F with probability 0.75, + 0.1 if the finding | log(1.2) for F |
| bmd_tscore | normal(-1.5, 1), - 0.6 if the finding | -log(1.4) per SD (lower BMD, higher risk) |
| prior_fracture | 0/1, probability 0.15, + 0.15 if the finding | log(1.8) |
| glucocorticoids | 0/1, probability 0.08, independent of the finding | log(1.6) |

prior_fracture and glucocorticoids are drawn after every other random number, so the columns
age, sex and bmd_tscore, and the draws behind each time, are the ones of a seed before they were
added; follow-up changes only for the subjects with either of them (their hazard is higher).
Synthetic, for demos and tests: it says nothing about any patient.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from vfa.cohort.data import numeric_column, read_csv, require_columns
from vfa.runs import atomic_write, refuse_existing

# log hazard ratios per unit of each covariate (age per 10 years, T-score per SD), and the
# baseline: about 3 % of unexposed 72-year-olds have the outcome per year
AGE_PER_10Y, BMD_PER_SD, FEMALE = np.log(1.5), np.log(1.4), np.log(1.2)
PRIOR_FRACTURE, GLUCOCORTICOIDS = np.log(1.8), np.log(1.6)
BASE_RATE, SHAPE, DEATH_RATE, DEATH_AGE_PER_10Y = 0.03, 1.2, 0.04, np.log(2.0)


def draw_outcomes(exposure: np.ndarray, hr: float, seed: int = 0, accrual: float = 4.0, study: float = 9.0,
                  shape: float = SHAPE) -> pd.DataFrame:
    """time (years), event (0 censored, 1 fracture, 2 death), age, sex, bmd_tscore, prior_fracture,
    glucocorticoids for each exposure value."""
    rng = np.random.default_rng(seed)
    x = np.asarray(exposure, dtype=float)
    n = len(x)
    age = rng.normal(72, 7, n) + 4 * x
    female = rng.random(n) < 0.75 + 0.1 * x
    bmd = rng.normal(-1.5, 1.0, n) - 0.6 * x
    e_fracture = rng.exponential(size=n)
    t_death = rng.exponential(size=n) / (DEATH_RATE * np.exp(DEATH_AGE_PER_10Y * (age - 72) / 10))
    t_censor = study - rng.uniform(0, accrual, n)
    prior = (rng.random(n) < 0.15 + 0.15 * x).astype(int)  # drawn last: the draws above stay those of a seed
    steroids = (rng.random(n) < 0.08).astype(int)
    lp = (np.log(hr) * x + AGE_PER_10Y * (age - 72) / 10 - BMD_PER_SD * (bmd + 1.5) + FEMALE * female
          + PRIOR_FRACTURE * prior + GLUCOCORTICOIDS * steroids)
    # Weibull with hazard BASE_RATE * shape * t^(shape-1) * exp(lp): T = (E / (rate * exp(lp)))^(1/shape)
    t_fracture = (e_fracture / (BASE_RATE * np.exp(lp))) ** (1 / shape)
    time = np.minimum.reduce([t_fracture, t_death, t_censor])
    event = np.select([time == t_fracture, time == t_death], [1, 2], 0)
    return pd.DataFrame({"time": np.round(time, 4), "event": event, "age": np.round(age, 1),
                         "sex": np.where(female, "F", "M"), "bmd_tscore": np.round(bmd, 2), "prior_fracture": prior,
                         "glucocorticoids": steroids})


def synth_cohort(predictions: str | Path, out: str | Path, hr: float = 1.85, seed: int = 0,
                 id_col: str = "image_id", threshold: float | None = None, force: bool = False) -> pd.DataFrame:
    """OUT (CSV): one outcome row per row of PREDICTIONS, exposure = its `predicted` column (or
    raw >= threshold)."""
    if not hr > 0:
        raise ValueError(f"--hr must be > 0, got {hr}")
    pred = read_csv(predictions, "predictions")
    require_columns(pred, [id_col, "raw" if threshold is not None else "predicted"], predictions)
    exposure = (numeric_column(pred, "raw", predictions) >= threshold) if threshold is not None else \
        numeric_column(pred, "predicted", predictions)
    out = refuse_existing(out, force, inputs=[predictions])
    frame = pd.concat([pred[[id_col]].reset_index(drop=True),
                       draw_outcomes(exposure.to_numpy(int), hr, seed)], axis=1)
    atomic_write(out, frame.to_csv(index=False))
    return frame
