"""`--dicom-out DIR`: results returned to the PACS as DICOM objects beside each DICOM input.

Per image: a Structured Report (TID 1500, `vfa.io.dicom_sr`) and Secondary Captures
(`vfa.io.dicom_sc`): the heatmap overlay when one is given (vfa heatmap), the per-vertebra
outlines when the model gave a vertebrae table, else the source image under the result banner.
Each object joins the source's study in a new series (one SR and one SC series per study and
run), with the source's patient and study modules copied: these objects go back to the same PACS,
so identifiers belong in them. Nothing else does: file names, the index CSV, logs and errors carry
no identifier (`vfa.io.identifiers.public_path`). Written atomically; an existing object is never
replaced without `force`. docs/dicom-outputs.md shows what a PACS receives.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from vfa.errors import ConfigError
from vfa.io.dicom_sc import banner_lines, build_sc, draw_vertebrae, with_banner
from vfa.io.dicom_sr import ModelInfo, build_sr  # noqa: F401  (ModelInfo: this module's API)
from vfa.io.identifiers import public_path
from vfa.io.images import is_dicom, read_image_info

SERIES_DESCRIPTION = "vfa RESEARCH USE - NOT FOR DIAGNOSIS"
SR_SERIES, SC_SERIES = 901, 902
INDEX = "dicom_outputs.csv"
INDEX_FIELDS = ("file", "p_fracture", "predicted", "sr", "sc")
# Patient, Clinical Trial Subject and General/Patient Study module attributes copied beyond what
# highdicom copies itself (PatientName, PatientID, PatientBirthDate, PatientSex, StudyInstanceUID,
# AccessionNumber, StudyID, StudyDate, StudyTime, ReferringPhysicianName)
PATIENT_STUDY = ("IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence", "OtherPatientIDsSequence",
                 "PatientBirthTime", "PatientComments", "PatientIdentityRemoved", "DeidentificationMethod",
                 "DeidentificationMethodCodeSequence", "ResponsiblePerson", "ResponsibleOrganization",
                 "PatientSpeciesDescription", "StudyDescription", "ProcedureCodeSequence",
                 "ReferencedStudySequence", "IssuerOfAccessionNumberSequence", "PhysiciansOfRecord",
                 "NameOfPhysiciansReadingStudy", "AdmittingDiagnosesDescription", "PatientAge", "PatientSize",
                 "PatientWeight", "EthnicGroup", "AdditionalPatientHistory", "ClinicalTrialSponsorName",
                 "ClinicalTrialProtocolID", "ClinicalTrialProtocolName", "ClinicalTrialSiteID", "ClinicalTrialSiteName",
                 "ClinicalTrialSubjectID", "ClinicalTrialSubjectReadingID", "ClinicalTrialTimePointID")


def check_sources(paths, flag: str = "--dicom-out") -> None:
    """Refuse, before any work, inputs that are not DICOM: a result object joins its image's study,
    and a PNG or JPEG has none. One line naming the first such file (identifiers hashed)."""
    bad = [p for p in paths if not is_dicom(p)]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ConfigError(f"{flag}: {public_path(Path(bad[0]).as_posix())}{more} is not DICOM, so there is no "
                          f"study to attach a result to; give DICOM inputs or leave out {flag}")
    for p in paths:
        try:
            src = read_source(p)
        except Exception:  # unreadable: the run itself reports (or skips) it, as any bad file
            continue
        missing = [k for k in ("StudyInstanceUID", "SOPInstanceUID", "SOPClassUID") if not src.get(k)]
        if missing:
            raise ConfigError(f"{flag}: {public_path(Path(p).as_posix())} has no {' or '.join(missing)}, so no "
                              f"result can be attached to its study; leave it out or leave out {flag}")


def read_source(path) -> object:
    """The source's header (no pixels), for references and the patient / study modules."""
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, stop_before_pixels=True, force=True)


def copy_patient_study(src, ds) -> None:
    for key in PATIENT_STUDY:
        if key in src and key not in ds:
            ds[key] = src[key]


VERTEBRA_COLUMNS = ("level", "grade", "type", *(f"{k}_{a}" for k in ("sup_ant", "sup_mid", "sup_post", "inf_ant",
                                                                       "inf_mid", "inf_post") for a in "xy"))


def check_vertebrae(table) -> None:
    """A per-vertebra table that cannot be reported (a missing column, an unknown level, grade or type)
    is refused in one line before anything is written."""
    from vfa.io.dicom_sr import LEVELS, SHAPES, evaluable

    if table is None or len(table) == 0:
        return
    missing = [c for c in VERTEBRA_COLUMNS if c not in table] + ([] if {"file", "filename"} & set(table) else ["file"])
    if missing:
        raise ConfigError(f"vertebrae table: no column {', '.join(missing)}")
    read = np.array([evaluable(r) for r in table.to_dict("records")], dtype=bool)   # a level not evaluable
    bad = {"level": ~table["level"].astype(str).isin(LEVELS),                       # has no grade or type
           "grade": read & ~pd.to_numeric(table["grade"], errors="coerce").isin([0, 1, 2, 3]),
           "type": read & ~table["type"].astype(str).str.lower().isin(SHAPES)}
    for col, mask in bad.items():
        if mask.any():
            allowed = LEVELS if col == "level" else (0, 1, 2, 3) if col == "grade" else SHAPES
            raise ConfigError(f"vertebrae table: {col} '{table.loc[mask, col].iloc[0]}' "
                              f"(row {int(mask.to_numpy().argmax()) + 2}) is not one of {', '.join(map(str, allowed))}")


def vertebra_rows(vertebrae, file: str, path: str) -> list[dict]:
    """The rows of a vertebrae table for one image: its `file` (or a phantom's `filename`) equal to
    the predictions' `file`, else a relative name that the image's path ends with."""
    if vertebrae is None or len(vertebrae) == 0:
        return []
    col = "file" if "file" in vertebrae else "filename"
    names = vertebrae[col].astype(str)
    hit = names == str(file)
    if not hit.any():
        posix = Path(path).as_posix()
        hit = names.map(lambda n: posix == n or posix.endswith("/" + n.lstrip("./")))
    return vertebrae[hit.to_numpy()].to_dict("records")


class DicomWriter:
    """Writes SR + SC per image as they come (`add`), then the index CSV (`close`)."""

    def __init__(self, out_dir, model: ModelInfo, force: bool = False, frame: int | None = None):
        self.out, self.model, self.force, self.frame = Path(out_dir), model, force, frame
        self.series: dict[str, tuple[str, str]] = {}   # StudyInstanceUID -> (SR series, SC series)
        self.counts = {SR_SERIES: 0, SC_SERIES: 0}
        self.index: list[dict] = []
        self.stems: set[str] = set()

    def names(self, file: str, kinds) -> dict[str, Path]:
        """Output paths for one image: STEM_sr.dcm, STEM_sc[-KIND].dcm; STEM: its public name."""
        stem = Path(public_path(Path(str(file)).name)).stem
        base, n = stem, 1
        while stem in self.stems:
            n += 1
            stem = f"{base}-{n}"
        self.stems.add(stem)
        return {kind: self.out / f"{stem}_{kind}.dcm" for kind in kinds}

    def check(self) -> None:
        """Before any work: an output folder that already holds vfa DICOM outputs needs `force`."""
        if self.force or not self.out.is_dir():
            return
        found = next((f for f in self.out.iterdir() if f.name == INDEX or f.name.endswith(("_sr.dcm", ".dcm"))), None)
        if found is not None:
            raise FileExistsError(f"{self.out} already holds DICOM outputs ({found.name}); "
                                  "pass --force to replace them")

    def refuse_existing(self, targets) -> None:
        existing = [t for t in targets if t.exists()]
        if existing and not self.force:
            raise FileExistsError(f"{existing[0]} exists; pass --force to replace the DICOM outputs in {self.out}")

    def _series(self, src) -> tuple[str, str]:
        import highdicom as hd

        study = str(src.StudyInstanceUID)
        if study not in self.series:
            self.series[study] = (hd.UID(), hd.UID())
        return self.series[study]

    def _next(self, series: int) -> int:
        self.counts[series] += 1
        return self.counts[series]

    def add(self, file: str, path, p: float, positive: bool, overlay: np.ndarray | None = None,
            vertebrae=()) -> dict:
        """One image's SR and SCs (heatmap, vertebrae, or the plain banner image), then its index row."""
        src = read_source(path)
        if "StudyInstanceUID" not in src or "SOPInstanceUID" not in src:
            raise ConfigError(f"--dicom-out: {public_path(Path(path).as_posix())} has no StudyInstanceUID or "
                              "SOPInstanceUID, so no result can be attached to it")
        kinds = ["sr"] + (["sc-heatmap"] if overlay is not None else []) + (["sc-vertebrae"] if vertebrae else [])
        if len(kinds) == 1:
            kinds.append("sc")
        targets = self.names(file, kinds)
        self.refuse_existing(targets.values())
        sr_series, sc_series = self._series(src)
        sr = build_sr(src, p, positive, self.model, vertebrae, sr_series, SR_SERIES, self._next(SR_SERIES),
                      SERIES_DESCRIPTION)
        copy_patient_study(src, sr)
        _save(sr, targets["sr"])
        what = {"sc-heatmap": "heatmap overlay", "sc-vertebrae": "vertebrae outlined (colour: Genant grade)",
                "sc": "source image"}
        for kind in kinds[1:]:
            if kind == "sc-heatmap":
                picture = overlay
            else:
                gray = read_image_info(path, self.frame)[0]
                picture = draw_vertebrae(gray, vertebrae) if kind == "sc-vertebrae" else gray
            rgb, _ = with_banner(picture, banner_lines(p, positive, self.model.threshold, what[kind]))
            sc = build_sc(src, rgb, sc_series, SC_SERIES, self._next(SC_SERIES), SERIES_DESCRIPTION,
                          f"vfa {self.model.version} {what[kind]}; P(fracture) {p:.4f}")
            copy_patient_study(src, sc)
            _save(sc, targets[kind])
        row = {"file": file, "p_fracture": float(p), "predicted": int(positive), "sr": targets["sr"].name,
               "sc": ";".join(targets[k].name for k in kinds[1:])}
        self.index.append(row)
        return row

    def close(self) -> Path:
        from vfa.runs import write_csv

        index = self.out / INDEX
        old = []
        if index.is_file():  # a resumed or repeated run: keep the rows of images not done again
            import csv

            with open(index, newline="") as f:
                done = {r["file"] for r in self.index}
                old = [r for r in csv.DictReader(f) if r.get("file") not in done]
        write_csv(index, INDEX_FIELDS, old + self.index)
        return index


def _save(ds, path: Path) -> None:
    from vfa.runs import atomic_write

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    atomic_write(path, buf.getvalue())


def write_outputs(rows, sources, out_dir, model: ModelInfo, vertebrae=None, overlays=None, force: bool = False,
                  frame: int | None = None, inputs=()) -> list[dict]:
    """SR + SC per row of a predictions table (`file`, the score column `model.score`, `predicted`)
    whose source DICOM file is `sources[i]` (same order). `vertebrae`: the per-vertebra table
    (vertebrae.csv) or None; `overlays`: {file: RGB heatmap overlay}. Returns the index rows."""
    from vfa.runs import check_out

    if len(sources) != len(rows):
        raise ValueError(f"{len(rows)} rows but {len(sources)} source files")
    check_sources(sources)
    check_vertebrae(vertebrae)
    out = check_out(out_dir, inputs, "folder")
    out.mkdir(parents=True, exist_ok=True)
    writer = DicomWriter(out, model, force, frame)
    writer.check()
    # the model's score column; a per-vertebra model's is p_fracture
    score = next((c for c in (model.score, "raw", "p_fracture") if c in rows), None)
    if score is None:
        raise ConfigError(f"the predictions have no {model.score}, raw or p_fracture column")
    for (_, r), path in zip(rows.iterrows(), sources):
        p = float(r[score])
        positive = bool(int(r["predicted"])) if "predicted" in r else p >= model.threshold
        writer.add(str(r["file"]), path, p, positive, (overlays or {}).get(r["file"]),
                   vertebra_rows(vertebrae, str(r["file"]), str(path)))
    writer.close()
    return writer.index
