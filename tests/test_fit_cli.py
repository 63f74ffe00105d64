"""`mlx_qat.fit`: results files merged (a sweep split across machines), collisions refused by
name, the report, fit.json and the plots, on synthetic runs in the sweep's row format written
by a known law plus noise.

The synthetic sweep: 3 sizes x 2 budgets x bits {2, 4} x 6 fractions, an FP anchor per
(N, D, bits) (each its own run: another loss), and classic runs at one setting; 87 rows.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math

import numpy as np
import pytest

from mlx_qat.cli import fit as fit_cli
from mlx_qat.fit import FitResult, LawParams, predict
from mlx_qat.fit.results import check_one_data, pipeline_pairs, read_results, select_pipeline

TRUE = LawParams(
    E=1.8, A=300.0, alpha=0.35, B_c=600.0, beta=0.3, theta=0.4, kappa=0.7, phi=3.0, chi=0.4,
    psi=0.1, omega=0.3, lam=1000.0, mu=0.5, nu=0.1, xi=-1.5, rho=0.3,
)  # fmt: skip
SIZES, TPP, BITS = (8e6, 16e6, 32e6), (20, 160), (2, 4)
FRACTIONS = (0.05, 0.1, 0.2, 0.35, 0.5, 0.7)
CLASSIC = (16e6, 160, 4, (0.1, 0.2, 0.35))  # N, tokens per parameter, bits, fractions
SIGMA = 0.002


def sweep_row(N, D, f, bits, pipeline, loss, seed=0) -> dict:
    """A row as `mlx_qat.sweep.results.make_row` writes it (FP anchor: f = 0, bits null)."""
    fp = f == 0.0
    name = f"n{int(N)}_D{int(D)}_b{bits}_f{f}_{pipeline}_s{seed}"
    b = None if fp else bits
    return {
        "name": name,
        "groups": ["fp_anchor" if fp else "main"],
        "config_hash": hashlib.sha256(name.encode()).hexdigest()[:16],
        "N": N,
        "N_nonemb": 0.8 * N,
        "param_bytes": N * bits / 8 * 1.1,
        "nominal_bytes": N * bits / 8,
        "D": D,
        "D_fp": (1 - f) * D,
        "D_qat": f * D,
        "S": D / (N * bits / 8 * 1.1),
        "f": f,
        "f_requested": f,
        "bits": b,
        "ptq_bits": bits,
        "group_size": 64,
        "quantizer": "minmax",
        "pipeline": pipeline,
        "seed": seed,
        "final_loss": loss,
        "fp_loss": loss if fp else loss - 0.05,
        "qat_loss": None if fp else loss,
        "ptq_loss": loss + 0.3,
        "wall_s": 1.0,
        "tokens_per_s": 1e4,
    }


def make_sweep(sigma=SIGMA, seed=0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []

    def noisy(N, D, f, b):
        return float(predict(TRUE, N, (1 - f) * D, f * D, b)) * math.exp(rng.normal(0, sigma))

    for N in SIZES:
        for tpp in TPP:
            D = N * tpp
            for b in BITS:
                rows.append(sweep_row(N, D, 0.0, b, "fused", noisy(N, D, 0.0, None)))
                rows += [sweep_row(N, D, f, b, "fused", noisy(N, D, f, b)) for f in FRACTIONS]
    N, tpp, b, fs = CLASSIC
    rows += [sweep_row(N, N * tpp, f, b, "classic", noisy(N, N * tpp, f, b) + 0.01) for f in fs]
    return rows


def write_jsonl(path, rows, torn=False):
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    path.write_text(text + ('{"name": "half a ro' if torn else ""), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def sweep():
    return make_sweep()


@pytest.fixture(scope="module")
def split(sweep, tmp_path_factory):
    """The sweep split across two machines: 10 rows on both, the second file's last row torn."""
    d = tmp_path_factory.mktemp("split")
    (d / "a").mkdir(), (d / "b" / "copy").mkdir(parents=True)
    a = write_jsonl(d / "a" / "results.jsonl", sweep[:50])
    b = write_jsonl(d / "b" / "copy" / "results.jsonl", sweep[40:], torn=True)
    return d, a, b


@pytest.fixture(scope="module")
def fitted(split, tmp_path_factory):
    """`mlx_qat.fit a/ b/ --out OUT --bootstrap 4`, once: (stdout, OUT)."""
    d, a, _ = split
    out = tmp_path_factory.mktemp("fit") / "out"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = fit_cli.main([str(a), str(d / "b"), "--out", str(out), "--bootstrap", "4"])
    assert rc == 0
    return buf.getvalue(), out


def test_merge_is_the_union(sweep, split):
    d, a, b = split
    m = read_results([a, d / "b"])  # a folder without results.jsonl: found below it
    assert len(m.rows) == len(sweep) == 87
    assert [r["config_hash"] for r in m.rows] == [r["config_hash"] for r in sweep]
    assert m.duplicates == 10 and m.torn == 1
    assert m.files == {str(a): 50, str(b): 47}
    rows, counts = select_pipeline(m.rows)
    assert counts == {"fp": 12, "qat": 72, "other_pipeline": {"classic": 3}, "no_loss": 0}
    assert all("pipeline" not in r for r in rows if r["bits"] is None)
    pairs = pipeline_pairs(m.rows)
    assert [p["f"] for p in pairs] == [0.1, 0.2, 0.35]
    assert all(p["classic"] - p["fused"] == pytest.approx(0.01, abs=0.01) for p in pairs)


def test_a_sweep_folder_fits_its_own_rows_and_its_shards_each_run_once(sweep, tmp_path):
    """`mlx_qat.fit <out>` with `<out>/results.jsonl` and `<out>/shard-i-of-n/results.jsonl`
    fits all of them; a run in both (trained by the sweep and again by a shard: other
    timings) counts once."""
    out = tmp_path / "sweep"
    (out / "shard-0-of-2").mkdir(parents=True), (out / "shard-1-of-2").mkdir()
    write_jsonl(out / "results.jsonl", sweep[:30])
    again = [
        dict(r, wall_s=r["wall_s"] + 1, tokens_per_s=r["tokens_per_s"] / 2) for r in sweep[20:30]
    ]
    write_jsonl(out / "shard-0-of-2" / "results.jsonl", again + sweep[30:60])
    write_jsonl(out / "shard-1-of-2" / "results.jsonl", sweep[60:])
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = fit_cli.main([str(out), "--bootstrap", "0", "--no-plot"])
    assert rc == 0
    text = buf.getvalue()
    assert "rows: 87 from 3 file(s)" in text and "10 identical duplicate(s) kept once" in text
    assert f"{out / 'shard-1-of-2' / 'results.jsonl'} (27)" in text
    assert "law fit on the fused pipeline: 12 FP + 72 QAT rows" in text


def test_one_fp_run_at_two_bit_widths_counts_once(sweep, tmp_path):
    """Sweeps before the anchor trained once wrote one FP row per bit width: the same run
    (N, D, seed, loss) under two config hashes. The fit counts it once."""
    fp2 = {(r["N"], r["D"]): r for r in sweep if r["bits"] is None and r["ptq_bits"] == 2}
    rows = [
        dict(
            r, final_loss=fp2[r["N"], r["D"]]["final_loss"], fp_loss=fp2[r["N"], r["D"]]["fp_loss"]
        )
        if r["bits"] is None and r["ptq_bits"] == 4
        else r
        for r in sweep
    ]
    m = read_results([write_jsonl(tmp_path / "results.jsonl", rows)])
    assert len(m.rows) == 81 and m.fp_repeats == 6
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert fit_cli.main([str(tmp_path), "--bootstrap", "0", "--no-plot"]) == 0
    text = buf.getvalue()
    assert "6 FP row(s) of an FP run already read (at another bit width) counted once" in text
    assert "law fit on the fused pipeline: 6 FP + 72 QAT rows" in text


def test_rows_of_two_data_sets_are_refused_unless_mixing_is_asked(sweep, tmp_path, capsys):
    """Rows record their data (shards key, tokenizer sha256): two data sets with one
    vocabulary (the same config hashes) are refused by name unless --mix-data; rows of an
    unknown data set (older rows) beside rows of a known one are refused too."""
    a_data = {"shards_key": "a" * 64, "tokenizer_sha256": "t" * 64}
    b_data = {"shards_key": "b" * 64, "tokenizer_sha256": "t" * 64}
    a = write_jsonl(tmp_path / "a.jsonl", [dict(r, data=a_data) for r in sweep])
    b = write_jsonl(tmp_path / "b.jsonl", [dict(r, data=b_data) for r in sweep[:20]])
    assert fit_cli.main([str(a), str(b), "--no-plot", "--bootstrap", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("mlx_qat.fit: error: the rows come from 2 data sets")
    assert f"shards key {'a' * 16}, tokenizer sha256 {'t' * 16} in {a} (87 rows)" in err
    assert f"shards key {'b' * 16}" in err and f"{b} (20 rows)" in err and "--mix-data" in err
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = fit_cli.main([str(a), str(b), "--no-plot", "--bootstrap", "0", "--mix-data"])
    assert rc == 0 and "rows: 107 from 2 file(s)" in buf.getvalue()
    assert "rows of 2 data sets fitted together (--mix-data)" in buf.getvalue()
    old = write_jsonl(tmp_path / "old.jsonl", sweep[:5])  # written before rows had `data`
    with pytest.raises(ValueError, match=f"unknown data .* in {old} "):
        check_one_data(read_results([a, old]))
    assert check_one_data(read_results([old])) == 1  # alone: fitted as before


def test_colliding_config_hash_is_refused_by_name(sweep, tmp_path, capsys):
    a = write_jsonl(tmp_path / "a.jsonl", sweep[:5])
    other = dict(sweep[3], final_loss=sweep[3]["final_loss"] + 0.1, wall_s=9.0)
    b = write_jsonl(tmp_path / "b.jsonl", [sweep[7], other])
    with pytest.raises(ValueError) as e:
        read_results([a, b])
    msg = str(e.value)
    assert sweep[3]["config_hash"] in msg and f"{a}:4" in msg and f"{b}:2" in msg
    assert "final_loss, wall_s" in msg
    assert fit_cli.main([str(a), str(b), "--no-plot"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mlx_qat.fit: error: config_hash") and f"{b}:2" in err


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    assert fit_cli.main([str(tmp_path / "missing.jsonl")]) == 1
    assert "no such file or folder" in capsys.readouterr().err
    assert fit_cli.main([str(tmp_path)]) == 1
    assert "no results.jsonl in this folder or below it" in capsys.readouterr().err
    assert fit_cli.main([]) == 1
    assert "give the sweep results" in capsys.readouterr().err


def test_a_binary_file_is_refused_naming_it(tmp_path, capsys):
    binary = tmp_path / "fit.npy"
    binary.write_bytes(b"\x93NUMPY\x01\x00v\x00{'descr': '<f4'}\n\xff\xfe\x00\x00")
    assert fit_cli.main([str(binary), "--no-plot"]) == 1
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith(f"mlx_qat.fit: error: {binary}: not a JSON lines file") and "\n" not in err
    )


def test_report(fitted):
    text, out = fitted
    assert "rows: 87 from 2 file(s)" in text
    assert "10 identical duplicate(s) kept once; 1 torn last line(s) skipped" in text
    assert "3 classic QAT row(s) not in the law fit" in text
    assert "law fit on the fused pipeline: 12 FP + 72 QAT rows" in text
    for needle in (
        "R² of log L",
        "RMSE of log L",
        "leave-largest-size-out: refit without N = 32M, predict its 24 QAT runs",
        "baseline, a constant f = 0.1",
        # D = N x tokens per parameter: no other size ran the 32M model's budgets
        "verdict: held-out loss: no fitted size ran the held-out size's (D, bits, f)",
        "verdict: held-out optimal fraction: the law's argmin",
        "a from the parabola vertex in ln f",
        "a from the grid argmin",
        "f-hat, paper a = 6.73",
        "the law's own argmin",
        "empirical optima per (N, D, bits)",
        "fused vs classic at equal budget",
        "fused lower in 3 of 3 pairs",
        "95% bootstrap intervals, 4 resamples",
    ):
        assert needle in text, needle
    table = text.split("empirical optima per (N, D, bits)")[1].split("\n\n")[0]
    assert len(table.strip().splitlines()) == 1 + 1 + len(SIZES) * len(TPP) * len(BITS)
    assert (out / "report.txt").read_text() in text + "\n"


def test_fit_json(fitted):
    _, out = fitted
    res = FitResult.load(out / "fit.json")
    assert res.n_rows["fp"] == 12 and res.n_rows["qat"] == 72
    assert res.r2_log > 0.99 and res.rmse_log < 3 * SIGMA
    assert res.holdout["N"] == 32e6 and res.holdout["mean_abs_rel_err"] < 0.05
    assert res.bootstrap["n"] == 4 and set(res.bootstrap["a"]) == {"argmin", "vertex"}
    # each resample re-derives the optima from its own runs: a run left out moves its group's
    # optimum by a grid cell, so the draws need not straddle the full-data a
    lo, hi = res.bootstrap["a"]["vertex"]
    assert 0 < lo < hi < 100
    h = res.holdout
    assert h["copy"] is None and h["fraction"]["n_optima"] == len(TPP) * len(BITS)
    assert len(h["verdict"]) == 3 and set(h["law_beats"]) == {"const_f_law", "const_f_f_hat"}
    assert len(res.optima) == 12
    # the law's prediction of every fused run stays within the noise
    R = [r for r in make_sweep(sigma=0.0) if r["pipeline"] == "fused"]
    got = np.array([predict(res.params, r["N"], r["D_fp"], r["D_qat"], r["bits"]) for r in R])
    assert np.max(np.abs(got / np.array([r["final_loss"] for r in R]) - 1)) < 0.01


def test_resolved_settings_repeat_the_command(fitted, tmp_path):
    import yaml

    _, out = fitted
    saved = yaml.safe_load((out / "fit.yaml").read_text())
    assert saved["bootstrap"] == 4 and saved["pipeline"] == "fused" and saved["plot"] is True
    assert saved["fp_tokens"] == "total" and saved["out"] == str(out) and len(saved["results"]) == 2
    again = fit_cli.build_parser()
    from mlx_qat.cli.common import resolve

    opts = resolve(again, ["--config", str(out / "fit.yaml"), "--bootstrap", "3"])
    assert opts["results"] == saved["results"] and opts["bootstrap"] == 3


def test_default_out_is_next_to_the_first_results(sweep, tmp_path):
    a = write_jsonl(tmp_path / "results.jsonl", sweep)
    assert fit_cli.main([str(a), "--bootstrap", "0", "--no-plot", "--quiet"]) == 0
    assert (tmp_path / "fit" / "fit.json").is_file() and (tmp_path / "fit" / "fit.yaml").is_file()
    assert not list((tmp_path / "fit").glob("*.png"))


def test_plots(fitted):
    pytest.importorskip("matplotlib")
    _, out = fitted
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == [
        "best_bits_vs_memory.png",
        "fused_vs_classic.png",
        "loss_vs_fraction.png",
        "optimal_fraction_vs_S.png",
        "predicted_vs_observed.png",
    ]
    for name in names:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, name


def test_minimize_runs_scipy_openblas_on_one_thread():
    """L-BFGS-B runs on one scipy OpenBLAS thread (12x faster on a busy 2-core machine); the
    count is restored afterwards."""
    pytest.importorskip("scipy.optimize")
    from threadpoolctl import ThreadpoolController, threadpool_info

    from mlx_qat.fit import objective as ob

    def scipy_threads():
        return [i["num_threads"] for i in threadpool_info() if "scipy.libs" in i["filepath"]]

    if not scipy_threads():
        pytest.skip("scipy does not bundle OpenBLAS here")
    seen = []

    def quadratic(theta):
        seen.append(scipy_threads())
        return float(theta @ theta), 2 * theta

    with ThreadpoolController().select(prefix="libscipy_openblas").limit(limits=2):
        before = scipy_threads()
        theta, j = ob.minimize(quadratic, np.ones(3), [0, 2], [(-5.0, 5.0)] * 3)
        assert seen and all(t == [1] * len(before) for t in seen)
        assert scipy_threads() == before == [2] * len(before)
    np.testing.assert_allclose(theta, [0.0, 1.0, 0.0], atol=1e-6)
    assert j == pytest.approx(1.0)
