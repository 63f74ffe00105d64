"""`mlx_qat.diagnose` at a group size that does not fit the model (diagnose.source.
check_group_sizes): `--group-size 128` on a width-64 model left 13 of 15 layers in float and
still said "PTQ is fine". Now a layer the format would quantize but whose input width the group
size does not divide is refused by name, with the group sizes that fit, for a run and for an
mlx-lm model; a fitting group size still diagnoses every layer."""

from __future__ import annotations

import subprocess
import sys

import pytest
from test_convert_fixtures import REPO

from mlx_qat.diagnose import DiagnoseSettings, diagnose

CHEAP = ["--eval-batches", "1", "--random-draws", "0", "--sr-draws", "0", "--attribution", "off"]
SAID = (
    "group size 128 does not divide the input width (64) of 13 of the 15 layers the target "
    "format quantizes (model.embed_tokens, model.layers.*.self_attn.q_proj"
)
FIT = "group sizes that divide every layer: 32, 64 (pass --group-size 64)"


def test_group_size_that_leaves_most_layers_in_float_is_refused(tmp_path, runs):
    run = runs.make(tmp_path / "run", fake_quant=False)
    out = tmp_path / "diag"
    proc = subprocess.run(
        [sys.executable, "-m", "mlx_qat", "diagnose", str(run.path), "--group-size", "128",
         *CHEAP, "--no-plot", "--out", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("mlx_qat.diagnose: error: ") and SAID in err and FIT in err
    assert "PTQ is fine" not in proc.stdout and not (out / "diagnose.json").exists()


@pytest.mark.parametrize("group_size", [128, 32])
def test_mlx_lm_model_group_size(hf_model, tiny_data, group_size):
    """An mlx-lm model is prepared at the target format itself: its misfits were not even
    listed as skipped."""
    cheap = DiagnoseSettings(random_draws=0, sr_draws=0, attribution="off", alpha_points=5)
    kw = dict(data=str(tiny_data.path), eval_batches=1, settings=cheap, group_size=group_size)
    if group_size == 128:
        with pytest.raises(ValueError, match=r"of 13 of the 15 layers .* \(pass --group-size 64\)"):
            diagnose(hf_model, **kw)
    else:
        d = diagnose(hf_model, **kw)
        assert len(d["covered"]) == 15 and d["skipped"] == []
