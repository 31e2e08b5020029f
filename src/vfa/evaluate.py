"""Evaluate a checkpoint on a labelled class-folder set: predictions.csv and metrics JSON."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
from torch.utils.data import DataLoader

from vfa.data import scan_folder, validate, write_skipped
from vfa.metrics import format_line, med_metrics, scalars
from vfa.predict import eval_dataset, load_model, predict_loader
from vfa.runs import atomic_write, prepare_run_dir


def _json_safe(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else
                ("inf" if v == math.inf else v)) for k, v in d.items()}


def evaluate(model_path: str | Path, data: str | Path, out: str | Path, metrics_name: str = "metrics.json",
             threshold: float = 0.5, on_bad_file: str = "error", batch_size: int = 16, num_workers: int = 2,
             force: bool = False, progress: bool = True, log=print) -> dict:
    model = load_model(model_path)
    cfg = model.config
    samples = validate(scan_folder(data, cfg.data.classes), on_bad_file)
    out = Path(out)
    if metrics_name == "metrics.json":
        prepare_run_dir(out, force)
    write_skipped(samples, out / "skipped.csv")
    loader = DataLoader(eval_dataset(model, samples.paths, samples.labels), batch_size=batch_size,
                        num_workers=num_workers)
    probs = predict_loader(model, loader, progress)
    md = med_metrics(samples.labels, probs, threshold, with_curve=False)
    result = {**_json_safe(scalars(md)), "threshold": threshold, "notes": md["notes"],
              "model": str(model_path), "data": str(data), "skipped": len(samples.skipped)}
    atomic_write(out / metrics_name, json.dumps(result, indent=2))
    root = Path(samples.root)
    frame = pd.DataFrame({"image": [str(Path(p).relative_to(root)) for p in samples.paths],
                          "label": samples.labels, "p_fracture": probs,
                          "predicted": (probs >= threshold).astype(int)})
    atomic_write(out / metrics_name.replace("metrics.json", "predictions.csv"), frame.to_csv(index=False))
    log(f"{data}: {format_line(md)}  (n={md['n']}, threshold {threshold})")
    return result


from vfa._callable import make_callable  # noqa: E402

make_callable(__name__, "evaluate")
