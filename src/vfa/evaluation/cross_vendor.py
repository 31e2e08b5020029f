"""The cross-vendor table of `make demo-clinical`: per model family x training vendor x test vendor,
read from the metrics.json files the evaluations wrote (`vfa cross-vendor ROOT` prints it).

Layout under ROOT (what the Makefile target writes): FAMILY-TRAIN/ is a training run and
FAMILY-TRAIN/on-TEST/metrics.json its evaluation on TEST's held-out split, FAMILY in {image, vertebra}.
Every key is read defensively: a metric an evaluation did not write is shown as n/a, so the table
works with per-vertebra metrics.json files from before and after their breakdowns were added.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

from vfa.data.check import text_table

FAMILY_ORDER = ("image", "vertebra")   # the table's order of the model families (the run folders' prefixes)
RUN = re.compile(r"^(?P<kind>image|vertebra)-(?P<train>[a-z0-9_]+)$")
EVAL = re.compile(r"^on-(?P<test>[a-z0-9_]+)$")
HEADER = ["family", "train", "test", "n", "image AUC (95% CI)", "level acc", "Sn / Sp (fracture)", "Sn grade>=2",
          "kappa", "FP among mimics", "not-evaluable agr."]


def _get(d, *keys):
    """d[k1][k2]... or None where any step is missing."""
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _f(v, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _value(m) -> float | None:
    """A per-vertebra metric as vertebra_metrics writes it ({value, ci, ...}) or a bare number."""
    v = m.get("value") if isinstance(m, dict) else m
    return float(v) if isinstance(v, int | float) else None


def _share(*entries) -> float | None:
    """k / n pooled over Wilson entries ({k, n}); None when none has counts."""
    k = sum(e["k"] for e in entries if isinstance(e, dict) and "k" in e)
    n = sum(e["n"] for e in entries if isinstance(e, dict) and "n" in e)
    return k / n if n else None


def _mimic_fp(v: dict) -> float | None:
    """The false-positive rate among mimics: bodies called fractured / evaluable normal bodies, pooled
    over the mimic kinds of the per-vertebra breakdown ({kind: {k, n, false_positive_rate, ci}}; `none`
    is the bodies without a mimic and stays out)."""
    rows = _get(v, "breakdown", "mimic")
    kinds = [r for kind, r in rows.items() if kind not in ("none", "") and isinstance(r, dict)] \
        if isinstance(rows, dict) else []
    n = sum(r.get("n", 0) for r in kinds)
    return sum(r.get("k", 0) for r in kinds) / n if n else None


def _not_evaluable(v: dict) -> float | None:
    """The share of bodies whose evaluable call agrees with the truth's `readable`, under whichever
    of the names the per-vertebra evaluation uses."""
    for key in ("not_evaluable_agreement", "evaluable_agreement", "readable_agreement"):
        if key in v:
            return _value(v[key])
    return None


def row(family: str, train: str, test: str, metrics: dict) -> list[str]:
    """One table row from one evaluation's metrics.json."""
    auc, ci = metrics.get("auc"), metrics.get("auc_ci") or [None, None]
    cells = [family, train, test, str(metrics.get("n", "n/a")), f"{_f(auc)} ({_f(ci[0])}-{_f(ci[1])})"]
    v = metrics.get("vertebrae")
    if not isinstance(v, dict):
        return cells + ["-"] * (len(HEADER) - len(cells))
    sn, sp = _value(v.get("sensitivity")), _value(v.get("specificity"))
    return cells + [_f(_value(v.get("level_accuracy"))), f"{_f(sn)} / {_f(sp)}",
                    _f(_share(v.get("sensitivity_grade2"), v.get("sensitivity_grade3"))),
                    _f(_value(v.get("grade_kappa"))), _f(_mimic_fp(v)), _f(_not_evaluable(v))]


def collect(root: str | Path) -> list[list[str]]:
    """Every FAMILY-TRAIN/on-TEST/metrics.json under `root` as a row: image before vertebra, each
    training vendor's own test set (within vendor) before the other (across vendors)."""
    rows = []
    for run in sorted(Path(root).iterdir()) if Path(root).is_dir() else []:
        m = RUN.match(run.name)
        if not m or not run.is_dir():
            continue
        for ev in sorted(run.iterdir()):
            e = EVAL.match(ev.name)
            if not e or not (ev / "metrics.json").is_file():
                continue
            try:
                metrics = json.loads((ev / "metrics.json").read_text())
            except (OSError, ValueError):
                continue   # a metrics.json being written or broken: the row is left out, not a traceback
            key = (FAMILY_ORDER.index(m["kind"]), m["train"], e["test"] != m["train"], e["test"])
            rows.append((key, row(m["kind"], m["train"], e["test"], metrics)))
    return [r for _, r in sorted(rows, key=lambda x: x[0])]


def format_table(root: str | Path) -> str:
    """The printed table, or one line saying nothing was found."""
    rows = collect(root)
    if not rows:
        return f"no evaluations under {root} (expected FAMILY-TRAIN/on-TEST/metrics.json, FAMILY image or vertebra)"
    note = ("phantom results (vfa's clinical phantom, not patients); train == test: within vendor, else across "
            "vendors; per-vertebra columns among the bodies the rules read, - for the image classifier")
    return "\n".join([*text_table(HEADER, rows), note])
