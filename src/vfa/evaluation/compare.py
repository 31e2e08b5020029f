"""`vfa compare`: two models' predictions on the same images, paired: DeLong (AUC), McNemar (Sn, Sp)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from vfa.config import ConfigError
from vfa.inference.predict import SCORES, read_predictions
from vfa.runs import json_safe
from vfa.stats import accuracy as stats


def compare(a_csv: str | Path, b_csv: str | Path, score: str = "raw", score_b: str | None = None) -> dict:
    """Paired comparison of two models' predictions on the same images, matched by image_id:
    DeLong test of the AUC difference (A - B) of `score` (A) and `score_b` (B), and McNemar tests
    of Sn and Sp of the classes those scores give at the thresholds each evaluation used for them."""
    score_b = score_b or score
    a, b = read_predictions(a_csv), read_predictions(b_csv)
    thresholds = {}
    for name, f, path, s in (("A", a, a_csv, score), ("B", b, b_csv, score_b)):
        if s not in f or "predicted" not in f:
            raise ConfigError(f"{name} has no '{s}' or no 'predicted' column")
        if f["image_id"].duplicated().any():
            raise ConfigError(f"{name}: duplicate image IDs, cannot match images (use --id-regex in evaluate)")
        f["decided"], thresholds[name] = decisions(f, path, s, name)
    m = a.set_index("image_id").add_suffix("_a").join(b.set_index("image_id").add_suffix("_b"), how="inner")
    if m.empty:
        raise ConfigError("no image IDs in common between the two files")
    if (m["label_a"] != m["label_b"]).any():
        raise ConfigError(f"{int((m['label_a'] != m['label_b']).sum())} matched images have different labels")
    y = m["label_a"].to_numpy().astype(int)
    res = {"n": len(m), "only_in_a": len(a) - len(m), "only_in_b": len(b) - len(m), "score_a": score,
           "score_b": score_b, "threshold_a": thresholds["A"], "threshold_b": thresholds["B"],
           "delong": stats.delong_paired(y, m[f"{score}_a"].to_numpy(), m[f"{score_b}_b"].to_numpy())}
    ca, cb = m["decided_a"].to_numpy() == y, m["decided_b"].to_numpy() == y
    for key, cls in (("sn", 1), ("sp", 0)):
        sel = y == cls
        res[f"{key}_a"] = float(ca[sel].mean()) if sel.any() else math.nan
        res[f"{key}_b"] = float(cb[sel].mean()) if sel.any() else math.nan
        res[f"mcnemar_{key}"] = stats.mcnemar(int((ca & ~cb)[sel].sum()), int((~ca & cb)[sel].sum()))
    return json_safe(res)


def decisions(frame: pd.DataFrame, csv_path: str | Path, score: str, name: str = "") -> tuple[pd.Series, float | None]:
    """(class per image under `score`, its threshold): the threshold the evaluation chose for that
    score (its metrics.json, beside the CSV); without one, the CSV's own `predicted` column, which
    is only unambiguous when the file has a single score."""
    path = Path(csv_path)
    meta_path = path.with_name(path.name.replace("predictions.csv", "metrics.json"))
    meta = json.loads(meta_path.read_text()) if meta_path != path and meta_path.is_file() else {}
    threshold = ((meta.get("scores") or {}).get(score) or {}).get("threshold")
    if threshold is not None:
        return (frame[score] >= threshold).astype(int), float(threshold)
    if meta.get("score", score) == score and (meta or [c for c in SCORES if c in frame] == [score]):
        return frame["predicted"].astype(int), meta.get("threshold")
    raise ConfigError(f"{name}: no threshold known for {score!r} ({meta_path.name} beside {path.name} has none); "
                      "evaluate with that --score, or keep its metrics.json beside the predictions")
