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
    n_b = len(b)
    thresholds = {}
    for name, f, path, s in (("A", a, a_csv, score), ("B", b, b_csv, score_b)):
        if s not in f or "predicted" not in f:
            raise ConfigError(f"{name} has no '{s}' or no 'predicted' column")
        if f["image_id"].duplicated().any():
            raise ConfigError(f"{name}: duplicate image IDs, cannot match images (use --id-regex in evaluate)")
        f["decided"], thresholds[name] = decisions(f, path, s, name)
    matched_by = "image_id"
    m = a.set_index("image_id").add_suffix("_a").join(b.set_index("image_id").add_suffix("_b"), how="inner")
    if m.empty:  # the same images evaluated as a folder and as a manifest: norm/x.png vs test/norm/x.png
        pairs = match_by_ending(a["image_id"], b["image_id"])
        if not pairs:
            raise ConfigError(f"no image IDs in common between the two files, nor IDs that name the same file "
                              f"under another root (A: {_example(a)}; B: {_example(b)}); evaluate both with the "
                              f"same --id-regex or --id-column")
        b = b.assign(image_id=b["image_id"].map(pairs)).dropna(subset=["image_id"])
        m = a.set_index("image_id").add_suffix("_a").join(b.set_index("image_id").add_suffix("_b"), how="inner")
        b_id = next(k for k, v in pairs.items() if v == m.index[0])
        matched_by = f"image file: IDs differ by a root, e.g. A {m.index[0]!r} = B {b_id!r}"
    if (m["label_a"] != m["label_b"]).any():
        raise ConfigError(f"{int((m['label_a'] != m['label_b']).sum())} matched images have different labels")
    y = m["label_a"].to_numpy().astype(int)
    res = {"n": len(m), "only_in_a": len(a) - len(m), "only_in_b": n_b - len(m), "matched_by": matched_by,
           "score_a": score,
           "score_b": score_b, "threshold_a": thresholds["A"], "threshold_b": thresholds["B"],
           "delong": stats.delong_paired(y, m[f"{score}_a"].to_numpy(), m[f"{score_b}_b"].to_numpy())}
    ca, cb = m["decided_a"].to_numpy() == y, m["decided_b"].to_numpy() == y
    for key, cls in (("sn", 1), ("sp", 0)):
        sel = y == cls
        res[f"{key}_a"] = float(ca[sel].mean()) if sel.any() else math.nan
        res[f"{key}_b"] = float(cb[sel].mean()) if sel.any() else math.nan
        res[f"mcnemar_{key}"] = stats.mcnemar(int((ca & ~cb)[sel].sum()), int((~ca & cb)[sel].sum()))
    return json_safe(res)


def match_by_ending(a_ids, b_ids) -> dict[str, str]:
    """{B's ID: A's ID} for IDs that name the same image file under different roots: one is the
    other's path ending (whole /-separated parts, e.g. norm/x.png and test/norm/x.png), kept only
    where each has exactly one such partner, so that no image is matched by a guess."""
    def endings(i: str) -> list[str]:
        parts = str(i).replace("\\", "/").strip("/").split("/")
        return ["/".join(parts[k:]) for k in range(len(parts))]

    a_ids, b_ids = [str(i) for i in a_ids], [str(i) for i in b_ids]
    b_set, b_by_ending = set(b_ids), {}
    for b in b_ids:
        for e in endings(b):
            b_by_ending.setdefault(e, set()).add(b)
    partners_of_a = {a: b_by_ending.get(endings(a)[0], set()) | {e for e in endings(a) if e in b_set}
                     for a in a_ids}
    partners_of_b: dict[str, set] = {}
    for a, bs in partners_of_a.items():
        for b in bs:
            partners_of_b.setdefault(b, set()).add(a)
    return {next(iter(bs)): a for a, bs in partners_of_a.items()
            if len(bs) == 1 and len(partners_of_b[next(iter(bs))]) == 1}


def _example(frame: pd.DataFrame) -> str:
    return f"{len(frame)} images, e.g. {frame['image_id'].iloc[0]!r}" if len(frame) else "no images"


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
