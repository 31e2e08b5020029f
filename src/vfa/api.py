"""The library entry points that chain steps, exactly as the CLI runs them: `vfa.train(cfg, out)` in
a notebook does what `vfa train` does, held-out test evaluation included."""
from __future__ import annotations

from pathlib import Path

from vfa.evaluation.evaluate import evaluate
from vfa.registry import FAMILIES
from vfa.runs import is_secondary_rank, lock
from vfa.training.checkpointing import training_summary
from vfa.training.tracking import log_results


def train(cfg, out: str | Path, force: bool = False, resume: bool = False, log=print) -> Path:
    """Train as configured (`vfa.training.train.train`); when `cfg.data.test` is set, evaluate
    best.ckpt on that held-out set afterwards: RUN/test_metrics.json and test_predictions.csv."""
    with lock(out, ddp=True):  # a second run into the same folder is refused, not interleaved
        run = FAMILIES.of(cfg).step("train")(cfg, out, force=force, resume=resume, log=log)
        if is_secondary_rank():
            return run
        metrics = None
        if cfg.data.test:
            metrics = evaluate(run / "checkpoints" / "best.ckpt", cfg.data.test, run, metrics_name="test_metrics.json",
                               on_bad_file=cfg.data.on_bad_file, progress=cfg.trainer.progress, split="test", log=log)
            log(f"held-out test metrics written to {run / 'test_metrics.json'}")
        log_results(cfg, run, metrics)
        log(training_summary(run, metrics))
    return run


def resume(run: str | Path, overrides: dict | None = None, epochs: int | None = None, log=print) -> Path:
    """Continue `run` from checkpoints/last.ckpt with its saved config.yaml; `overrides` (--set) may
    re-tune it (e.g. trainer.devices) and `epochs` extend it."""
    from vfa import config as config_mod

    run = Path(run)
    cfg_file = run / "config.yaml"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{run} is not a vfa run directory (no config.yaml)")
    cfg = config_mod.from_dict(config_mod.yaml.safe_load(cfg_file.read_text()))
    config_mod.merge_into(cfg, overrides or {})
    if epochs:
        cfg.optim.epochs = epochs
    config_mod.check(cfg)
    return train(cfg, run, resume=True, log=log)  # (train records the extended config in config.yaml)
