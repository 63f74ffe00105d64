"""The package as pip installs it: declared dependencies and build floor, one version, the
configs shipped in the wheel, and (slow) the wheel installed in a fresh venv running
`mlx_qat.train --config main` and `mlx_qat.convert` end to end, with no repository on sys.path.

Building the wheel uses pip's build isolation (it fetches setuptools >= 77 from the index, as
`pip install .` does on a user's machine).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import mlx_qat

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
CORPUS = REPO / "tests" / "fixtures" / "corpus"
EXTRAS_ONLY = {"scipy", "matplotlib", "gguf"}  # imported lazily, with a message naming the extra


def _name(req: str) -> str:
    return re.sub(r"[-_.]+", "-", Requirement(req).name).lower()


def test_build_floor_supports_the_spdx_license():
    project = PYPROJECT["project"]
    assert isinstance(project["license"], str)  # PEP 639 expression: setuptools >= 77
    (req,) = [Requirement(r) for r in PYPROJECT["build-system"]["requires"] if "setuptools" in r]
    floor = min(Version(s.version) for s in req.specifier if s.operator == ">=")
    assert floor >= Version("77"), req
    assert (REPO / "LICENSE").read_text().startswith("MIT License")


def test_every_imported_distribution_is_declared():
    """Each third-party module the package imports comes from a declared dependency: a core
    one, or an extra for the few imported lazily (fit, plot, gguf)."""
    project = PYPROJECT["project"]
    core = {_name(r) for r in project["dependencies"]}
    extras = {_name(r) for reqs in project["optional-dependencies"].values() for r in reqs}
    modules = set()
    for path in (REPO / "mlx_qat").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    dists = packages_distributions()
    third = sorted(m for m in modules - set(sys.stdlib_module_names) if m != "mlx_qat")
    for module in third:
        names = {re.sub(r"[-_.]+", "-", d).lower() for d in dists.get(module, [module])}
        where = extras if module in EXTRAS_ONLY else core
        assert names & where, f"mlx_qat imports {module} ({names}) but does not declare it"
    # private mlx-lm names (mlx_qat/mlxlm_compat.py): the next minor release is untested
    bounded = [Requirement(r) for r in project["dependencies"] if _name(r) in ("mlx", "mlx-lm")]
    assert len(bounded) == 3 and all("<" in str(r.specifier) for r in bounded), bounded


def test_version_has_one_source():
    assert "version" not in PYPROJECT["project"] and "version" in PYPROJECT["project"]["dynamic"]
    attr = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "mlx_qat.__version__" and Version(mlx_qat.__version__)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of the working tree, built from a copy (no build/ or egg-info in the repo)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "mlx_qat", src / "mlx_qat", ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp / "dist", src],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (whl,) = (tmp / "dist").glob("mlx_qat-*.whl")
    return whl


def test_wheel_ships_configs_license_and_version(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(
        p.relative_to(REPO).as_posix() for p in (REPO / "mlx_qat" / "configs").rglob("*.*")
    )
    assert shipped and set(shipped) <= set(names), sorted(set(shipped) - set(names))
    assert any(n.endswith("/licenses/LICENSE") for n in names)
    assert wheel.name.startswith(f"mlx_qat-{mlx_qat.__version__}-")
    meta = zipfile.ZipFile(wheel).read(f"mlx_qat-{mlx_qat.__version__}.dist-info/METADATA").decode()
    assert "License-Expression: MIT" in meta and "Requires-Dist: transformers" in meta


# Where the fresh venv's mlx_qat comes from, its sys.path, and the import finders it runs.
WHERE = """
import json, sys, mlx_qat
print(json.dumps([mlx_qat.__file__, sys.path, [type(f).__module__ for f in sys.meta_path]]))
"""


@pytest.mark.slow
def test_installed_wheel_trains_and_converts_end_to_end(wheel, tmp_path):
    """A fresh venv with only the wheel installed (no editable install, no repository on
    sys.path); the dependencies come from this environment's site-packages through a .pth
    file, whose own .pth files (the editable finder's) Python does not run."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    py, bin_ = venv / "bin" / "python", venv / "bin"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", wheel],
        check=True, timeout=300,
    )  # fmt: skip
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(subprocess.check_output([py, "-c", purelib], text=True).strip())
    deps = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "deps.pth").write_text("".join(f"{p}\n" for p in deps))
    work = tmp_path / "work"
    shutil.copytree(CORPUS, work / "corpus")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLX_QAT_DEBUG")}

    def run(*cmd):
        proc = subprocess.run(
            [str(c) for c in cmd], cwd=work, env=env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, f"{cmd}\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout + proc.stderr

    where = json.loads(run(py, "-c", WHERE).splitlines()[0])
    assert Path(where[0]).is_relative_to(site), where[0]
    assert not any((work / p).resolve() in (REPO, REPO / "mlx_qat") for p in where[1]), where[1]
    assert not any("editable" in m for m in where[2]), where[2]

    assert "--config FILE.yaml|NAME" in run(bin_ / "mlx_qat.train", "--help")
    out = run(bin_ / "mlx_qat.train", "--config", "main", "--data", "corpus", "--data-out", "data",
              "--tokens", "20000", "--qat-fraction", "0.5", "--out", "run", "--quiet")  # fmt: skip
    assert "QAT " in out and (work / "run" / "config.yaml").is_file()
    out = run(bin_ / "mlx_qat.convert", "run", "--mlx-path", "mlx_model")
    assert re.search(r"parity .*: ok", out), out
    assert json.loads((work / "mlx_model" / "config.json").read_text())["quantization"]["bits"] == 4
