"""`vfa calibrate`: a temperature fitted on validation NLL and a threshold chosen on the calibrated
probabilities, written into a copy of the checkpoint (`vfa.checkpoint.update`); for an ensemble,
a threshold on its combined validation scores, written into a new ensemble file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from vfa import checkpoint
from vfa.config import ConfigError
from vfa.data.dataset import create_dataset
from vfa.data.samples import load_samples, validate
from vfa.data.stream import default_workers
from vfa.inference.ensemble import is_ensemble_file, load_ensemble, model_paths, resolve_family, write_ensemble
from vfa.inference.backends import fp32_backend
from vfa.inference.predict import predict_loader
from vfa.models.network import model_device, p_fracture
from vfa.runs import refuse_existing
from vfa.stats import accuracy as stats


def calibrate(model_path, data: str | Path, out: str | Path, threshold: float | str = 0.5,
              temperature: bool = True, on_bad_file: str = "error", batch_size: int = 16,
              num_workers: int | None = None,
              force: bool = False, progress: bool = True, log=print, device: str = "auto") -> dict:
    """Fit a temperature (validation NLL) and choose a threshold on the calibrated validation
    probabilities; write a copy of the checkpoint with `vfa_temperature`, `vfa_threshold`,
    `vfa_threshold_source` and `vfa_calibration` (plain floats/strings), read by `load_model`.
    An ensemble (several checkpoints or an ensemble file) gets only a threshold, chosen on its
    combined validation scores and written into a new ensemble file; its members keep their own
    temperatures (calibrate each member first if they need one)."""
    paths = model_paths(model_path)
    resolve_family(paths, "calibrate").refuse("calibrate")
    ensemble = len(paths) > 1 or is_ensemble_file(paths[0])
    if ensemble and not is_ensemble_file(out):
        raise ConfigError(f"--out {out}: an ensemble's calibration is an ensemble file; give a .yaml name")
    out = refuse_existing(out, force, inputs=[*paths, data])
    try:
        kind, _ = stats.parse_threshold(threshold)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    ens = load_ensemble(paths, device)
    samples = validate(load_samples(data, ens.config.data.classes, split="val"), on_bad_file,
                       frame=ens.config.data.frame, min_side=ens.config.data.min_side)
    workers = default_workers(len(samples.paths), batch_size) if num_workers is None else num_workers
    y = np.asarray(samples.labels, dtype=int)
    if ensemble:
        from vfa.inference.engine import Scorer, score_paths

        rows, _ = score_paths(Scorer(ens, "torch"), samples.paths, batch_size, workers, progress)
        thr, source = _threshold(ens, kind, threshold, y, rows["raw"].to_numpy(float), data,
                                 f"{ens.combine} of {len(ens)} members")
        write_ensemble(ens.paths, out, ens.combine, float(thr), source, force)
        log(f"ensemble threshold {thr:.4g} ({source}); wrote {out}")
        return {"n": len(y), "threshold": float(thr), "threshold_source": source}
    model = ens.members[0]
    loader = DataLoader(create_dataset(model, samples), batch_size=batch_size, num_workers=workers)
    # fp32 on the fastest exact engine (issue 29): a temperature is fitted to the model as it computes
    exact = fp32_backend(model, len(samples.paths), model_device(model))
    logits = predict_loader(exact, loader, progress, logits=True).astype(float)
    try:
        t = stats.fit_temperature(y, logits) if temperature else 1.0
    except ValueError as exc:
        raise ConfigError(f"{data}: {exc}") from None
    before, after = p_fracture(logits, model.temperature), p_fracture(logits, t)
    thr, source = _threshold(model, kind, threshold, y, after, data, f"temperature {t:.4g}")
    summary = {"n": len(y), "temperature": t, "threshold": thr,
               "nll_before": stats.nll(y, logits, model.temperature), "nll_after": stats.nll(y, logits, t),
               **{f"{k}_before": v for k, v in stats.calibration(y, before).items() if k != "ece_bins"},
               **{f"{k}_after": v for k, v in stats.calibration(y, after).items() if k != "ece_bins"}}
    checkpoint.update(paths[0], out, force, vfa_temperature=float(t), vfa_threshold=float(thr),
                      vfa_threshold_source=source, vfa_calibration={k: float(v) for k, v in summary.items()})
    log(f"temperature {t:.4g} (NLL {summary['nll_before']:.4f} -> {summary['nll_after']:.4f}, ECE "
        f"{summary['ece_before']:.4f} -> {summary['ece_after']:.4f}); threshold {thr:.4g} ({source}); wrote {out}")
    return summary


def _threshold(model, kind: str, spec, y, p, data, how: str) -> tuple[float, str]:
    """(threshold, where it came from): the model's stored one, or `spec` chosen on (y, p)."""
    if kind == "model":
        return model.threshold, model.threshold_source
    try:
        thr = stats.choose_threshold(y, p, spec)
    except ValueError as exc:
        raise ConfigError(f"{data}: {exc}") from None
    return thr, f"{spec} on {data} (n={len(y)}, vfa calibrate, {how})"
