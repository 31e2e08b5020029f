"""`--dicom-out DIR` for vfa predict, evaluate and heatmap: checks before any image is scored,
then a post-step that turns the written predictions (and a per-vertebra table, when the model
gave one) into DICOM SR + SC objects per input (`vfa.io.dicom_out`; docs/dicom-outputs.md)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from vfa.inference.ensemble import sha256
from vfa.io.dicom_out import DicomWriter, ModelInfo, check_sources, write_outputs
from vfa.io.identifiers import public_path

VERTEBRAE = "vertebrae.csv"


def model_info(ens, threshold: float, score: str = "raw", tta: int = 0, paths=None) -> ModelInfo:
    """The algorithm identification of a loaded model or ensemble: its backbone, vfa's version and
    the sha256 of each checkpoint (`paths`, default: the ensemble's)."""
    from vfa import __version__

    from vfa.registry import FAMILIES

    name = FAMILIES.of(ens.config).describe(ens.config)
    members = getattr(ens, "members", [ens])  # an Ensemble, or one loaded model
    if len(members) > 1:
        name += f", ensemble of {len(members)} ({ens.combine})"
    checksums = [sha256(p) for p in (paths or getattr(ens, "paths", []))]
    return ModelInfo(name=name, version=__version__, checksums=checksums,
                     threshold=float(threshold), score=score, parameters=[f"tta={tta}"] if tta else [])


def prepare(out_dir, paths, force: bool = False, inputs=()) -> Path:
    """Before any scoring: every input DICOM (else one line saying which is not), --dicom-out
    neither an input nor inside one, and no earlier DICOM outputs there unless `force`."""
    from vfa.runs import check_out

    check_sources(paths)
    out = check_out(out_dir, inputs, "folder")
    DicomWriter(out, None, force).check()
    return out


def source_map(paths, keep_identifiers: bool = False, root=None) -> dict[str, str]:
    """A predictions table's `file` value -> the source path: the path as given (predict) or
    relative to the data folder (evaluate, heatmap), hashed as the table writes it."""
    public = (lambda r: r) if keep_identifiers else public_path
    out = {}
    for p in paths:
        posix = Path(p).as_posix()
        out[public(posix)] = p
        if root is not None:
            try:
                out[public(Path(p).relative_to(root).as_posix())] = p
            except ValueError:
                pass
    return out


def read_table(path) -> pd.DataFrame:
    path = Path(path)
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def vertebrae_beside(predictions, since: float | None = None) -> pd.DataFrame | None:
    """vertebrae.csv in the predictions' folder, if this run wrote it (modified at or after `since`,
    so an older table, e.g. a phantom's ground truth, is never reported as the model's)."""
    path = Path(predictions).parent / VERTEBRAE
    if not path.is_file() or (since is not None and path.stat().st_mtime < since):
        return None
    return pd.read_csv(path)


def write_results(rows: pd.DataFrame, paths, out_dir, info: ModelInfo, force: bool = False,
                  keep_identifiers: bool = False, root=None, vertebrae=None, frame=None, log=None) -> list[dict]:
    """SR + SC for each row of a predictions table whose `file` is one of `paths`; returns the index rows."""
    lookup = source_map(paths, keep_identifiers, root)
    keep = rows["file"].astype(str).map(lambda f: f in lookup).to_numpy()
    rows = rows[keep]
    written = write_outputs(rows, [lookup[str(f)] for f in rows["file"]], out_dir, info, vertebrae=vertebrae,
                            force=force, frame=frame)
    if log:
        log(f"wrote {len(written)} DICOM SR + SC sets to {out_dir}")
    return written


def for_predict(model, inputs, dicom_out, options: dict):
    """`vfa predict --dicom-out`: the checks now (before any scoring); returns the post-step,
    called with the finished predictions file."""
    import time

    from vfa.data.samples import expand_inputs

    listed = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    models = [model] if isinstance(model, str | Path) else [m for m in model if isinstance(m, str | Path)]
    paths = expand_inputs(listed, options.get("id_column"))
    prepare(dicom_out, paths, options.get("force", False), [*listed, *models])
    since = time.time()

    def finish(predictions) -> list[dict]:
        from vfa.inference.ensemble import load_ensemble
        from vfa.inference.predict import model_threshold

        ens = load_ensemble(model, options.get("device", "auto"))
        info = model_info(ens, model_threshold(ens, options.get("threshold", "model")), options.get("score", "raw"),
                          options.get("tta", 0))
        return write_results(read_table(predictions), paths, dicom_out, info, options.get("force", False),
                             options.get("keep_identifiers", False), vertebrae=vertebrae_beside(predictions, since),
                             frame=ens.config.data.frame, log=options.get("log"))
    return finish


def for_evaluate(dicom_out, samples, force: bool, inputs):
    """`vfa evaluate --dicom-out`: the checks now, on the labelled samples; returns the post-step
    (None without dicom_out)."""
    import time

    if not dicom_out:
        return None
    prepare(dicom_out, samples.paths, force, inputs)
    since = time.time()

    def finish(frame, ens, threshold: float, score: str, tta: int, keep_identifiers: bool, predictions,
               paths=None) -> list[dict]:
        return write_results(frame, samples.paths, dicom_out, model_info(ens, threshold, score, tta, paths), force,
                             keep_identifiers, root=samples.root, vertebrae=vertebrae_beside(predictions, since),
                             frame=ens.config.data.frame)
    return finish


class HeatmapDicom:
    """`vfa heatmap --dicom-out`: an SR and the overlay as an SC per image drawn (call it with each)."""

    def __init__(self, dicom_out, model, paths, force: bool, inputs=()):
        out = prepare(dicom_out, paths, force, inputs)
        self.threshold = float(model.threshold)
        self.writer = DicomWriter(out, model_info(model, self.threshold), force, model.config.data.frame)

    def __call__(self, path, file: str, p: float, overlay) -> dict:
        return self.writer.add(file, path, float(p), float(p) >= self.threshold, overlay=overlay)

    def close(self) -> Path:
        return self.writer.close()
