"""The clinical training presets draw the clinical phantom (`vfa synth --preset clinical-demo`)."""
import pandas as pd
import pytest

from vfa import config as config_mod
from vfa.cli import main as cli_main


@pytest.mark.parametrize("name", ["clinical-demo", "clinical-vertebra-demo"])
def test_clinical_presets_resolve(name):
    cfg = config_mod.resolve(name)
    assert cfg.synth["phantom"] == "clinical"
    assert cfg.augment == ("vendor" if name == "clinical-demo" else "none")


def test_synth_with_a_clinical_preset_draws_the_clinical_phantom(tmp_path, capsys):
    out = tmp_path / "lunar"
    args = ["synth", "--preset", "clinical-demo", "--vendor", "lunar", "--n", "6", "--out", str(out)]
    assert cli_main(args) in (0, None)
    manifest = pd.read_csv(out / "manifest.csv")
    assert set(manifest["vendor"]) == {"lunar"} and len(manifest) == 6
    assert "readable" in pd.read_csv(out / "vertebrae.csv").columns
    assert "clinical phantom" in capsys.readouterr().out
    # the default phantom's options stay refused for it, in one line
    assert cli_main(["synth", "--preset", "clinical-demo", "--n", "4", "--out", str(tmp_path / "x"),
                     "--no-settle"]) != 0
