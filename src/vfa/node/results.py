"""Reading a complete study with the one warm model, and its results as DICOM SR + SC.

The scoring is `vfa predict`'s (the model family's predict step from vfa.registry, on the loaded
model, with the verified `auto` backend for the image family) and the objects are `vfa predict --dicom-out`'s
(vfa.inference.dicom_results.write_results), so the node's P(fracture) is the one `vfa predict`
gives on the same file. One thing differs: the SR and SC series and instance UIDs. --dicom-out makes
new ones per run; the node derives them from the source (its Study / SOP Instance UID and the kind
of object), so reading or sending a study again after a crash or a `resend` produces the same
objects, which a PACS stores once (it replaces or keeps the one it has), never twice."""
from __future__ import annotations

import io
import logging
import shutil
import warnings
from pathlib import Path

LOG = logging.getLogger("vfa.node")
UID_ROOT_TAG = "vfa-node"  # entropy prefix: the node's UIDs never collide with another use of the source's


def derived_uid(*parts: str) -> str:
    """A UID fixed by `parts` (pydicom's generate_uid with entropy: a hash under pydicom's root)."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[UID_ROOT_TAG, *map(str, parts)])


class WarmModel:
    """The model or ensemble (either family) loaded once on `device`; `read` scores complete studies
    with the family's own predict step (vfa.registry: what `vfa predict` runs) and writes their results."""

    def __init__(self, model, device: str = "auto", log=None):
        from vfa.inference.dicom_results import model_info
        from vfa.inference.ensemble import load_ensemble, resolve_family
        from vfa.inference.predict import model_threshold

        self.spec = model if len(model) > 1 else model[0]
        self.family = resolve_family(self.spec, "node")  # before loading: a mixed ensemble is one line
        self.device = device
        self.ens = load_ensemble(self.spec, device)
        self.threshold = model_threshold(self.ens)
        self.info = model_info(self.ens, self.threshold)
        self.log = log or LOG.info

    def read(self, studies: dict[str, list[str]], outs: dict[str, Path], work: Path) -> dict[str, tuple | Exception]:
        """Several complete studies' images scored in one job (batched; its table in `work`), then SR +
        SC per image in each study's folder `outs[key]` (replaced whole); per study (files, index rows),
        or the error that stopped that study alone (e.g. none of its images decodes)."""
        import time

        import torch

        from vfa.inference.dicom_results import read_table, vertebrae_beside

        paths = [p for ps in studies.values() for p in ps]
        table = Path(work) / "predictions.csv"
        since = time.time()
        with torch.inference_mode():
            self.family.step("predict")(self.ens, paths, table, force=True, workers=0, device=self.device,
                                        on_bad_file="skip", log=self.log)
        frame, vertebrae = read_table(table), vertebrae_beside(table, since)
        done: dict[str, tuple | Exception] = {}
        for key, study_paths in studies.items():
            try:
                done[key] = self._write(frame, study_paths, outs[key], vertebrae)
            except Exception as exc:  # this study's results could not be written: it alone is retried
                done[key] = exc
        return done

    def _write(self, frame, paths: list[str], out: Path, vertebrae) -> tuple[list[Path], list[dict]]:
        from vfa.inference.dicom_results import write_results

        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        rows = write_results(frame, paths, tmp, self.info, force=True, frame=self.ens.config.data.frame,
                             vertebrae=vertebrae)
        if not rows:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RuntimeError(f"none of the study's {len(paths)} image(s) could be decoded")
        for f in sorted(tmp.glob("*.dcm")):
            fix_uids(f)
        _swap(tmp, out)
        return sorted(out.glob("*.dcm")), rows


def _swap(tmp: Path, out: Path) -> None:
    """`tmp` becomes `out` (an earlier read's folder replaced); a crash between the two renames leaves
    `tmp` complete and the study still `complete` in the queue, so it is read again."""
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def fix_uids(path: Path) -> None:
    """Replace an SR's or SC's random series and instance UIDs with ones derived from its source
    (the SR's evidence, the SC's source image) and its kind, then rewrite it atomically."""
    import pydicom

    from vfa.runs import atomic_write

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
    source = _source_uid(ds)
    kind = path.stem.rsplit("_", 1)[-1]  # sr, sc, sc-heatmap, sc-vertebrae (vfa.io.dicom_out's names)
    ds.SeriesInstanceUID = derived_uid(ds.StudyInstanceUID, "series", kind.split("-")[0])
    ds.SOPInstanceUID = derived_uid(source, kind)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    atomic_write(path, buf.getvalue())


def _source_uid(ds) -> str:
    if "SourceImageSequence" in ds:
        return str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID)
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    return str(evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
