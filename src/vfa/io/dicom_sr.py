"""The DICOM Structured Report vfa returns per image: TID 1500 (Measurement Report) in a
Comprehensive SR, built with highdicom (docs/dicom-outputs.md shows one as dsrdump prints it).

Content: one image-level group (TID 1501: fracture of bone at the vertebrae, present / absent at the
model's threshold, P(fracture) as a measurement, the algorithm's name, version and checkpoint
checksums), and for a per-vertebra model one planar ROI group per vertebra (TID 1410: the level as
finding site, the outline as a closed POLYLINE on the source image, Genant grade and shape; for a
level the reader could not read, the grade "not evaluable" and no fracture, shape or probability).
Standard codes (SNOMED CT, DCM, UCUM) where one fits; vfa's private scheme 99VFA where none does,
declared in the CodingSchemeIdentificationSequence.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# LEVELS, SHAPES, evaluable: dicom_out checks tables with them
from vfa.spine import LEVELS, SHAPES, evaluable, outline  # noqa: F401

RESEARCH_TEXT = "vfa research use only - not for diagnosis"
PRIVATE_SCHEME = "99VFA"
# SNOMED CT vertebrae, as in DICOM CID 7603 "Vertebra" (pydicom's code dictionary: codes.SCT.T4Vertebra ...)
LEVEL_CODES = {"T4": "73071006", "T5": "56401006", "T6": "45296009", "T7": "62487009", "T8": "11068009",
               "T9": "82687006", "T10": "7610001", "T11": "12989004", "T12": "23215003", "L1": "66794005",
               "L2": "14293000", "L3": "36470004", "L4": "11994002"}
GRADE_MEANINGS = ("normal", "mild", "moderate", "severe")
# 99VFA: what no standard code says (docs/dicom-outputs.md lists them)
PRIVATE_CODES = {
    "GENANT-GRADE": "Genant semiquantitative grade",
    **{f"GENANT-{g}": f"Genant grade {g} ({m})" for g, m in enumerate(GRADE_MEANINGS)},
    "GENANT-NE": "Not evaluable (the level cannot be read)",
    "VERT-SHAPE": "Vertebral body shape",
    **{f"SHAPE-{s.upper()}": f"{s.capitalize()} shape" if s == "normal" else f"{s.capitalize()} deformity"
       for s in SHAPES},
}


@dataclass
class ModelInfo:
    """What identifies the algorithm in the SR (TID 4019) and on the overlay."""
    name: str
    version: str
    checksums: list[str] = field(default_factory=list)   # sha256 of each checkpoint
    threshold: float = 0.5
    score: str = "raw"
    parameters: list[str] = field(default_factory=list)  # e.g. "tta=5"

    def algorithm_parameters(self) -> list[str]:
        return [*(f"checkpoint sha256={c}" for c in self.checksums), f"threshold={self.threshold:.6g}",
                f"score={self.score}", *self.parameters]


def private(value: str):
    import highdicom as hd

    return hd.sr.CodedConcept(value=value, scheme_designator=PRIVATE_SCHEME, meaning=PRIVATE_CODES[value])


def _codes():
    """The standard concepts used (built lazily: highdicom is imported only when DICOM is written)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sct = lambda v, m: hd.sr.CodedConcept(value=v, scheme_designator="SCT", meaning=m)  # noqa: E731
    return {"fracture": sct("125605004", "Fracture of bone"), "vertebra": codes.SCT.Vertebra,
            "present": codes.SCT.Present, "absent": codes.SCT.Absent, "probability": codes.DCM.Probability,
            "no_units": codes.UCUM.NoUnits, "procedure": codes.SCT.DualEnergyXRayAbsorptiometry,
            "comment": hd.sr.CodedConcept(value="121106", scheme_designator="DCM", meaning="Comment"),
            "qualitative": hd.sr.CodedConcept(value="C0034375", scheme_designator="UMLS",
                                              meaning="Qualitative Evaluations")}


def level_code(level: str):
    import highdicom as hd

    if level not in LEVEL_CODES:
        raise ValueError(f"vertebral level {level!r} is not one of {', '.join(LEVELS)}")
    return hd.sr.CodedConcept(value=LEVEL_CODES[level], scheme_designator="SCT", meaning=f"{level} vertebra")


def _algorithm(model: ModelInfo):
    import highdicom as hd

    return hd.sr.AlgorithmIdentification(name=model.name, version=model.version,
                                         parameters=model.algorithm_parameters())


def _probability(p: float, c: dict):
    import highdicom as hd

    return hd.sr.Measurement(name=c["probability"], value=float(p), unit=c["no_units"])


def _image_group(src, p: float, positive: bool, model: ModelInfo, c: dict):
    import highdicom as hd

    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="vertebral fracture (image)"),
        finding_type=c["fracture"], finding_sites=[hd.sr.FindingSite(c["vertebra"])],
        algorithm_id=_algorithm(model), measurements=[_probability(p, c)],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(c["fracture"], c["present" if positive else "absent"])],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(src)])


def _vertebra_group(src, v, model: ModelInfo, c: dict):
    """One vertebra's TID 1410 group: its level, outline, P(fracture), grade and shape; a level not
    evaluable (vfa.spine.evaluable) carries its level, outline and the grade "not evaluable" only."""
    import highdicom as hd

    region = hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=outline(v, closed=True),
                               source_image=hd.sr.SourceImageForRegion.from_source_image(src))
    if evaluable(v):
        measurements, evaluations = _read_vertebra(v, c)
    else:
        measurements = None
        evaluations = [hd.sr.QualitativeEvaluation(private("GENANT-GRADE"), private("GENANT-NE"))]
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"vertebra {v['level']}"),
        referenced_region=region, finding_type=c["fracture"], finding_sites=[hd.sr.FindingSite(level_code(v["level"]))],
        algorithm_id=_algorithm(model), measurements=measurements, qualitative_evaluations=evaluations)


def _read_vertebra(v, c: dict):
    """(measurements, qualitative evaluations) of an evaluable vertebra: P(fracture), fracture
    present/absent, Genant grade and shape."""
    import highdicom as hd

    grade = int(float(v["grade"]))
    if grade not in range(4):
        raise ValueError(f"Genant grade must be 0-3, got {grade} ({v['level']})")
    shape = str(v["type"]).lower()
    if shape not in SHAPES:
        raise ValueError(f"vertebra type must be one of {', '.join(SHAPES)}, got {shape!r} ({v['level']})")
    p = v.get("p_fracture")
    measurements = [_probability(p, c)] if p is not None and np.isfinite(float(p)) else None
    evaluations = [hd.sr.QualitativeEvaluation(c["fracture"], c["present" if grade >= 1 else "absent"]),
                   hd.sr.QualitativeEvaluation(private("GENANT-GRADE"), private(f"GENANT-{grade}")),
                   hd.sr.QualitativeEvaluation(private("VERT-SHAPE"), private(f"SHAPE-{shape.upper()}"))]
    return measurements, evaluations


def _research_note(c: dict):
    """TID 1500's Qualitative Evaluations container holding the research-use statement as TEXT."""
    import highdicom as hd

    box = hd.sr.ContainerContentItem(name=c["qualitative"], relationship_type="CONTAINS")
    box.ContentSequence = hd.sr.ContentSequence([hd.sr.TextContentItem(
        name=c["comment"], value=f"{RESEARCH_TEXT}: the output of a research algorithm, not a diagnosis",
        relationship_type="CONTAINS")])
    return box


def device_uid(model: ModelInfo) -> str:
    """The same algorithm (checkpoints) is the same device observer in every report."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["vfa", model.name, model.version, *model.checksums])


def build_sr(src, p: float, positive: bool, model: ModelInfo, vertebrae=(), series_uid: str | None = None,
             series_number: int = 901, instance_number: int = 1, series_description: str = ""):
    """A highdicom ComprehensiveSR (TID 1500) about `src` (a pydicom Dataset, pixels not needed);
    `vertebrae`: rows (mappings) of vertebrae.csv for this image."""
    import highdicom as hd
    from pydicom.dataset import Dataset

    c = _codes()
    groups = [_image_group(src, p, positive, model, c)] + [_vertebra_group(src, v, model, c) for v in vertebrae]
    observer = hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept(value="121007", scheme_designator="DCM", meaning="Device"),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid(model), name="vfa", manufacturer_name="vfa (open source)", model_name=model.name))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=c["procedure"], imaging_measurements=groups, referenced_images=[src])
    report[0].ContentSequence.append(_research_note(c))
    sr = hd.sr.ComprehensiveSR(
        evidence=[src], content=report[0], series_instance_uid=series_uid or hd.UID(), series_number=series_number,
        sop_instance_uid=hd.UID(), instance_number=instance_number, manufacturer="vfa (open source)",
        is_complete=True, is_final=False, is_verified=False)
    sr.SeriesDescription = series_description[:64]
    scheme = Dataset()
    scheme.CodingSchemeDesignator = PRIVATE_SCHEME
    scheme.CodingSchemeName = "vfa private codes (docs/dicom-outputs.md)"
    scheme.CodingSchemeResponsibleOrganization = "vfa project"
    sr.CodingSchemeIdentificationSequence = [scheme]
    return sr
