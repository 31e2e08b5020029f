"""Experiment tracking through Lightning's own loggers (csv, TensorBoard, MLflow), chosen by
`trainer.logger`. Each writes under RUN/logs/ (MLflow: to its tracking URI, with the run folder
recorded as a tag), so runs can be compared side by side in the tool a team already uses;
`history.csv` stays the run's own record whatever is chosen.

Logged: the resolved config as hyper-parameters (Lightning does this at fit start), the per-step
loss and learning rate, the per-epoch validation metrics, and, after training, the curve figures
and the held-out test metrics (`log_results`)."""
from __future__ import annotations

import os
from pathlib import Path

from vfa import config as config_mod
from vfa.errors import ConfigError

LOG_DIR = "logs"
MLFLOW_RUN_ID = "mlflow_run_id.txt"  # RUN/logs/: a resumed run continues the same MLflow run


def _mlflow(cfg, run_dir: Path):
    try:
        from lightning.pytorch.loggers import MLFlowLogger
        import mlflow  # noqa: F401  (the extra: Lightning's own message names the wrong package)
    except ImportError:
        raise ConfigError("trainer.logger mlflow needs MLflow: pip install 'vfa[mlflow]'") from None
    t = cfg.trainer
    store = run_dir.resolve().parent / "mlruns"  # default: a local store beside the run
    uri = t.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        store.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{store / 'mlflow.db'}"  # MLflow 3 keeps plain-file stores for old data only
    id_file = run_dir / LOG_DIR / MLFLOW_RUN_ID
    run_id = id_file.read_text().strip() if id_file.is_file() else None
    if run_id:  # MLflow parameters cannot change: a resumed run keeps those of its first start
        class ResumedMLFlowLogger(MLFlowLogger):  # (its final config.yaml is logged as an artifact)
            def log_hyperparams(self, params, *args, **kwargs) -> None:
                return None

        MLFlowLogger = ResumedMLFlowLogger  # noqa: N806
    return MLFlowLogger(experiment_name=t.experiment, run_name=run_dir.name, tracking_uri=uri, run_id=run_id,
                        artifact_location=None if t.tracking_uri else (store / "artifacts").as_uri(),
                        tags={"vfa.run_dir": str(run_dir.resolve()), "vfa.preset": cfg.preset})


def make_loggers(cfg, run_dir: str | Path) -> list:
    """The configured Lightning loggers for a run in `run_dir` ([] for none)."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    run_dir = Path(run_dir)
    out = []
    for name in config_mod.loggers(cfg.trainer):
        if name == "csv":
            # a version folder per session (version_0, then one per --resume): Lightning's CSV
            # logger empties the folder it opens
            out.append(CSVLogger(save_dir=str(run_dir / LOG_DIR), name="csv"))
        elif name == "tensorboard":
            out.append(TensorBoardLogger(save_dir=str(run_dir), name=LOG_DIR, version="tensorboard",
                                         default_hp_metric=False))
        elif name == "mlflow":
            out.append(_mlflow(cfg, run_dir))
    return out


def remember(loggers, run_dir: str | Path) -> None:
    """Keep the MLflow run id in the run folder, so `vfa train --resume` logs to the same run."""
    from vfa.runs import atomic_write

    from lightning.pytorch.loggers import MLFlowLogger

    for logger in loggers:
        if isinstance(logger, MLFlowLogger) and logger.run_id:
            atomic_write(Path(run_dir) / LOG_DIR / MLFLOW_RUN_ID, logger.run_id)


FIGURES = ("curves_metrics.png", "curves_loss.png")


def log_results(cfg, run_dir: str | Path, test_metrics: dict | None = None) -> None:
    """After training (and the test evaluation): the curve figures and the test metrics, to every
    configured logger. MLflow also gets the run's small files as artifacts."""
    run_dir = Path(run_dir)
    # (not the CSV logger: reopened, it would start a new version folder; test_metrics.json is beside it)
    from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger

    loggers = [lg for lg in make_loggers(cfg, run_dir) if not isinstance(lg, CSVLogger)]
    if not loggers:
        return
    step = max(1, int(cfg.optim.epochs))
    flat = {f"test_{k}": float(v) for k, v in (test_metrics or {}).items()
            if isinstance(v, int | float) and not isinstance(v, bool) and v == v}
    for logger in loggers:
        if flat:
            logger.log_metrics(flat, step=step)
        if isinstance(logger, TensorBoardLogger):
            _tensorboard_figures(logger, run_dir, step)
        elif isinstance(logger, MLFlowLogger):
            for name in (*FIGURES, "config.yaml", "history.csv", "test_metrics.json"):
                if (run_dir / name).is_file():
                    logger.experiment.log_artifact(logger.run_id, str(run_dir / name))
        logger.finalize("success")


def _tensorboard_figures(logger, run_dir: Path, step: int) -> None:
    import numpy as np
    from PIL import Image

    for name in FIGURES:
        if (run_dir / name).is_file():
            with Image.open(run_dir / name) as img:
                logger.experiment.add_image(name.removesuffix(".png"), np.asarray(img.convert("RGB")), step,
                                            dataformats="HWC")
