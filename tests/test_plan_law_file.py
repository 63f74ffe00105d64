"""`mlx_qat.plan --law FILE` (mlx_qat.cli.plan.load_law): a file that is JSON but not a fit.json
is one line naming the file, what it holds and what was expected, not an AttributeError."""

from __future__ import annotations

import subprocess
import sys

import pytest
from test_convert_fixtures import REPO

from mlx_qat.cli.plan import main as plan_main

PLAN = ["--preset", "d2", "--tokens", "1e5", "--law"]


def test_a_json_list_as_law_is_one_line_naming_the_file(tmp_path):
    law = tmp_path / "law.json"
    law.write_text("[1, 2, 3]\n")
    proc = subprocess.run(
        [sys.executable, "-m", "mlx_qat", "plan", *PLAN, str(law)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    err = proc.stderr.strip()
    assert "\n" not in err and f"--law {law}" in err
    assert "it holds a JSON list, not an object" in err and "fit.json" in err


@pytest.mark.parametrize(
    "text, said",
    [
        ('"fit.json"', "it holds a JSON string, not an object"),
        ("null", "it holds a JSON null, not an object"),
        ('{"schema": "mlx_qat.fit/1", "params": [1, 2]}', "its params is a JSON list"),
        ('{"schema": "other"}', "schema 'other'"),
    ],
)
def test_other_json_that_is_not_a_fit_is_refused_by_name(tmp_path, capsys, text, said):
    law = tmp_path / "law.json"
    law.write_text(text)
    assert plan_main([*PLAN, str(law)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"--law {law}" in err and said in err, err
