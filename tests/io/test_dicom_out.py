"""--dicom-out (issue #19): a DICOM phantom -> vfa predict / evaluate / heatmap --dicom-out -> SR +
SC per image, checked by an independent validator (dciodvfy, dicom3tools) and read back with
pydicom and highdicom: the right source referenced, the same P(fracture) as predictions.csv,
identifiers only inside the DICOM objects; PNG inputs refused before any scoring."""
import subprocess

import highdicom as hd
import numpy as np
import pandas as pd
import pydicom
import pytest

from tests import oracles
from tests.helpers import make_checkpoint, write_folder
from vfa.cli import main
from vfa.io.dicom_out import INDEX, ModelInfo, check_sources, write_outputs
from vfa.io.dicom_sr import LEVEL_CODES, PRIVATE_SCHEME

MODEL = ModelInfo("vfa test model", "0.0.test", ["0" * 64], threshold=0.5)


def validate(path) -> list[str]:
    """dciodvfy's errors for one file ([] when valid; its warnings are listed in docs/dicom-outputs.md)."""
    dciodvfy = oracles.dciodvfy()  # a test oracle: skips where missing, fails under VFA_REQUIRE_ORACLES=1
    res = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """Four DICOM phantom images (fake identifiers) with the phantom's vertebrae.csv, and a checkpoint."""
    from vfa.phantom.synth import PhantomConfig, synthesize

    root = tmp_path_factory.mktemp("dicom_out")
    synthesize(root / "ph", PhantomConfig(n=4, size=(160, 96), prevalence=0.5, seed=3, workers=1,
                                          splits=(0.0, 0.0, 1.0), format="dicom"), progress=False, force=True)
    return {"root": root, "data": root / "ph" / "test", "ckpt": make_checkpoint(root / "m.ckpt"),
            "vertebrae": pd.read_csv(root / "ph" / "vertebrae.csv")}


def probability(sr) -> float:
    """P(fracture) of the image-level group, read back through highdicom."""
    report = hd.sr.srread(sr) if not isinstance(sr, hd.sr.ComprehensiveSR) else sr
    group = report.content.get_image_measurement_groups()[0]
    item = group.get_measurements(name=pydicom.sr.codedict.codes.DCM.Probability)[0]
    return float(item[0].MeasuredValueSequence[0].get("FloatingPointValue", item.value))


def texts(item) -> list[str]:
    """Every TEXT value in an SR content tree."""
    out = [str(item.TextValue)] if "TextValue" in item else []
    for child in item.get("ContentSequence", []):
        out += texts(child)
    return out


def check_pair(sr_path, sc_path, source, p: float) -> None:
    """Both objects valid, in the source's study and patient, in new series, referencing the source."""
    src = pydicom.dcmread(source, stop_before_pixels=True)
    sr, sc = pydicom.dcmread(sr_path), pydicom.dcmread(sc_path)
    for ds in (sr, sc):
        assert (ds.StudyInstanceUID, ds.PatientID, ds.PatientName) == \
            (src.StudyInstanceUID, src.PatientID, src.PatientName)
        assert ds.SeriesInstanceUID != src.SeriesInstanceUID and ds.SOPInstanceUID != src.SOPInstanceUID
        assert "NOT FOR DIAGNOSIS" in ds.SeriesDescription
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert evidence.ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert sc.SeriesInstanceUID != sr.SeriesInstanceUID and sc.BurnedInAnnotation == "YES"
    assert hd.imread(sc_path).get_frame(1).shape == (sc.Rows, sc.Columns, 3)  # highdicom reads the SC back
    assert probability(sr_path) == pytest.approx(p, abs=1e-9)
    assert any("not for diagnosis" in t for t in texts(sr))
    assert [s.CodingSchemeDesignator for s in sr.CodingSchemeIdentificationSequence] == [PRIVATE_SCHEME]
    assert validate(sr_path) == [] and validate(sc_path) == []  # last: without dciodvfy the rest is still checked


def test_predict_dicom_out_end_to_end(phantom, tmp_path, capsys):
    out, dicom = tmp_path / "p.csv", tmp_path / "pacs"
    assert main(["predict", "--model", str(phantom["ckpt"]), str(phantom["data"]), "--out", str(out),
                 "--device", "cpu", "--dicom-out", str(dicom)]) == 0
    rows, index = pd.read_csv(out), pd.read_csv(dicom / INDEX)
    assert len(rows) == len(index) == 4
    for _, r in rows.iterrows():
        i = index[index["file"] == r["file"]].iloc[0]
        assert i["p_fracture"] == pytest.approx(r["raw"], abs=1e-12) and i["predicted"] == r["predicted"]
        check_pair(dicom / i["sr"], dicom / i["sc"], r["file"], r["raw"])
        sr = hd.sr.srread(dicom / i["sr"])
        finding = sr.content.get_image_measurement_groups()[0].get_qualitative_evaluations()[0]
        assert finding.value.value == ("52101004" if r["predicted"] else "272519000")  # SCT Present / Absent
    # one SR series and one SC series per study and run
    series = {pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID for f in dicom.glob("*.dcm")}
    studies = {pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID for f in dicom.glob("*.dcm")}
    assert len(series) == 2 * len(studies)
    # identifiers only inside the DICOM objects: not in names, the index, nor what was printed
    printed = "".join(capsys.readouterr())
    patient = str(pydicom.dcmread(next(dicom.glob("*_sr.dcm"))).PatientID)
    assert patient not in printed + (dicom / INDEX).read_text() + " ".join(f.name for f in dicom.iterdir())
    # never overwritten without --force, refused before any scoring
    out.unlink()
    assert main(["predict", "--model", str(phantom["ckpt"]), str(phantom["data"]), "--out", str(out),
                 "--device", "cpu", "--dicom-out", str(dicom)]) != 0
    assert not out.exists() and "--force" in capsys.readouterr().err


def test_png_inputs_are_refused_before_scoring(tmp_path, capsys):
    data = write_folder(tmp_path / "png", n_per_class=1)
    ckpt = make_checkpoint(tmp_path / "m.ckpt")
    out = tmp_path / "p.csv"
    assert main(["predict", "--model", str(ckpt), str(data), "--out", str(out), "--device", "cpu",
                 "--dicom-out", str(tmp_path / "pacs")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not DICOM" in err and "no study to attach" in err
    assert "Traceback" not in err and not out.exists() and not (tmp_path / "pacs").exists()
    with pytest.raises(Exception, match="not DICOM"):
        check_sources([next(data.rglob("*.png"))])


def test_evaluate_and_heatmap_dicom_out(phantom, tmp_path):
    ev, hm = tmp_path / "ev", tmp_path / "hm"
    assert main(["evaluate", "--model", str(phantom["ckpt"]), "--data", str(phantom["data"]), "--out", str(ev),
                 "--device", "cpu", "--gallery", "0", "--dicom-out", str(ev / "pacs")]) == 0
    rows, index = pd.read_csv(ev / "predictions.csv"), pd.read_csv(ev / "pacs" / INDEX)
    merged = rows.merge(index, on="file")
    assert len(merged) == 4 and np.allclose(merged["raw"], merged["p_fracture"], atol=1e-12)
    r = merged.iloc[0]
    check_pair(ev / "pacs" / r["sr"], ev / "pacs" / r["sc"], phantom["data"] / r["file"], r["raw"])
    assert main(["heatmap", "--model", str(phantom["ckpt"]), "--data", str(phantom["data"]), "--out", str(hm),
                 "--device", "cpu", "--dicom-out", str(tmp_path / "hm-pacs")]) == 0
    index = pd.read_csv(tmp_path / "hm-pacs" / INDEX)
    assert index["sc"].str.endswith("_sc-heatmap.dcm").all() and len(index) == 4
    assert all(validate(tmp_path / "hm-pacs" / name) == [] for name in index["sc"])
    assert sorted(p.suffix for p in hm.rglob("heatmap_*")) == [".png"] * 4  # a DICOM input's overlay is a .png


def test_per_vertebra_findings(phantom, tmp_path):
    """A hand-made per-vertebra table (the phantom's, with a P(fracture) per vertebra) -> one TID 1410
    group per vertebra: level (SNOMED CT), outline on the source image, Genant grade and shape (99VFA)."""
    v = phantom["vertebrae"].rename(columns={"filename": "file"})
    file = v.loc[v["grade"].idxmax(), "file"]
    table = v[v["file"] == file].assign(p_fracture=lambda t: 0.1 + 0.2 * t["grade"])
    source = phantom["root"] / "ph" / file
    rows = pd.DataFrame({"file": [file], "raw": [0.73], "predicted": [1]})
    written = write_outputs(rows, [source], tmp_path / "pacs", MODEL, vertebrae=table)
    sr_path, sc_path = tmp_path / "pacs" / written[0]["sr"], tmp_path / "pacs" / written[0]["sc"]
    assert sc_path.name.endswith("_sc-vertebrae.dcm")
    check_pair(sr_path, sc_path, source, 0.73)
    groups = hd.sr.srread(sr_path).content.get_planar_roi_measurement_groups()
    assert len(groups) == len(table) == 13
    src_uid = pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID
    for g, (_, t) in zip(groups, table.iterrows()):
        assert g.finding_sites[0].value.value == LEVEL_CODES[t["level"]]
        region = g.roi
        assert region.graphic_type.value == "POLYLINE" and region.value.shape == (7, 2)
        assert np.allclose(region.value[0], region.value[-1])  # closed
        assert np.allclose(region.value[0], [t["sup_ant_x"], t["sup_ant_y"]], atol=1e-3)
        assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src_uid
        codes = {e.name.value: e.value for e in g.get_qualitative_evaluations()}
        grade = codes["GENANT-GRADE"]
        assert grade.value == f"GENANT-{t['grade']}" and grade.scheme_designator == "99VFA"
        assert codes["VERT-SHAPE"].value == f"SHAPE-{t['type'].upper()}"
        assert float(g.get_measurements()[0].value) == pytest.approx(t["p_fracture"])
    broken = pydicom.dcmread(sr_path)
    del broken.CompletionFlag  # the validator does catch a broken object
    broken.save_as(tmp_path / "broken.dcm")
    assert any("CompletionFlag" in e or "Completion Flag" in e for e in validate(tmp_path / "broken.dcm"))
    with pytest.raises(FileExistsError, match="--force"):
        write_outputs(rows, [source], tmp_path / "pacs", MODEL, vertebrae=table)
    assert len(write_outputs(rows, [source], tmp_path / "pacs", MODEL, vertebrae=table, force=True)) == 1


def test_a_dicom_without_study_uid_is_refused(tmp_path):
    from vfa.io import write_dicom

    path = write_dicom(tmp_path / "x.dcm", np.zeros((64, 64), np.uint8))
    check_sources([path])
    ds = pydicom.dcmread(path)
    del ds.StudyInstanceUID
    ds.save_as(path)
    with pytest.raises(Exception, match="no StudyInstanceUID"):
        check_sources([path])


def test_a_bad_vertebrae_table_is_refused_before_writing(phantom, tmp_path):
    v = phantom["vertebrae"].rename(columns={"filename": "file"})
    file = v["file"].iloc[0]
    rows = pd.DataFrame({"file": [file], "p_fracture": [0.2], "predicted": [0]})  # a per-vertebra model's columns
    bad = v.assign(level=v["level"].replace("T4", "C7"))
    with pytest.raises(Exception, match="level 'C7'"):
        write_outputs(rows, [phantom["root"] / "ph" / file], tmp_path / "pacs", MODEL, vertebrae=bad)
    assert not (tmp_path / "pacs").exists()
    written = write_outputs(rows, [phantom["root"] / "ph" / file], tmp_path / "pacs", MODEL, vertebrae=v)
    assert probability(tmp_path / "pacs" / written[0]["sr"]) == pytest.approx(0.2)


def test_a_per_vertebra_models_predictions(phantom, tmp_path):
    """The post-step on a per-vertebra model's `vfa predict` tables (raw, vertebrae.csv beside
    them): its own loader, its name in the algorithm identification (random weights: no body found)."""
    import torch

    from vfa import checkpoint, config
    from vfa.inference.dicom_results import for_predict
    from vfa.inference.vertebra_predict import predict_vertebra_files
    from vfa.models.vertebra import build_vertebra_model

    cfg = config.resolve("vertebra-demo", overrides=config.parse_set(
        ["data.size=[192,112]", "vertebra.detector_size=[96,56]", "vertebra.crop_size=32", "vertebra.width=16",
         "vertebra.detector_backbone=resnet10t", "vertebra.landmark_backbone=resnet10t"]))
    torch.manual_seed(0)
    ckpt = str(checkpoint.save(tmp_path / "v.ckpt", build_vertebra_model(cfg.vertebra), cfg, force=True))
    finish = for_predict(ckpt, [phantom["data"]], tmp_path / "pacs", {"device": "cpu"})
    out = predict_vertebra_files(ckpt, [phantom["data"]], tmp_path / "p.csv", device="cpu", progress=False,
                                 log=lambda m: None).out
    written, rows = finish(out), pd.read_csv(out)
    assert len(written) == len(rows) == 4
    for w in written:
        sr = pydicom.dcmread(tmp_path / "pacs" / w["sr"])
        assert probability(tmp_path / "pacs" / w["sr"]) == pytest.approx(rows.set_index("file").loc[w["file"], "raw"])
        assert any(t.startswith("vfa per-vertebra reader") for t in texts(sr))
