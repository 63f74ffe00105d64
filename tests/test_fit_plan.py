"""`mlx_qat.fit.planning` and `mlx_qat.plan --law`: fraction rules, the token cost of a wrong
fraction, and the best bit width for a memory budget, against hand-computed synthetic laws.

Law P (penalty only): L = 2 + 1 + 1 + λ·S_fp^ξ / S_qat^ρ with λ = 1, ξ = −1, ρ = 1, so
L(f) = 4 + 1 / (S²·f·(1 − f)): f* = 1/2, L* = 4 + 4/S². At a fixed f the loss reaches L* when
S'²·f(1 − f) = S²/4, so the rule needs D' = D·√(1 / (4 f (1 − f))) tokens: 5/3·D for f = 0.1.

Law M (memory): L = 2 + 10⁶/N + 4·2^(−B), nothing depends on f or D. With N = 8·M/B:
M = 10⁶ bytes gives 3.25, 2.875, 2.75, 2.8125, 3.015625 for B = 2, 3, 4, 6, 8 (4 bits wins);
M = 10⁷ gives 3.025, 2.5375, 2.3, 2.1375, 2.115625 (8 bits wins).
"""

from __future__ import annotations

import json
import math

import pytest

from mlx_qat.cli.plan import main as plan_main
from mlx_qat.fit import A_PAPER, FitResult, LawParams, predict
from mlx_qat.fit.law import best_bits_for_memory
from mlx_qat.fit.planning import law_plan, memory_curves, memory_plan, parse_bytes, tokens_to_match

P = LawParams(2, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, -1, 1)
M = LawParams(2, 1e6, 1, 0, 0, 4, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0)
M_1E6 = [3.25, 2.875, 2.75, 2.8125, 3.015625]
M_1E7 = [3.025, 2.5375, 2.3, 2.1375, 2.115625]
A_FIT = 5.0


def loss_p(S, f):
    return 4 + 1 / (S * S * f * (1 - f))


def tokens_p(D, f):
    return D * math.sqrt(1 / (4 * f * (1 - f)))


def test_law_plan_by_hand():
    lp = law_plan(P, 1e6, 5e7, 4, a_fit=A_FIT, extra={"mine": 0.25})  # S = 100
    assert lp.S == 100 and lp.f_opt == pytest.approx(0.5, abs=1e-6)
    assert lp.loss_opt == pytest.approx(4 + 4 / 100**2, rel=1e-12)
    assert [c.rule for c in lp.choices] == [
        "law optimum",
        "f-hat, paper a = 6.73",
        "f-hat, fitted a = 5.00",
        "fixed 10 %",
        "mine",
    ]
    want_f = [0.5, math.exp(-A_PAPER / math.log(100)), math.exp(-A_FIT / math.log(100)), 0.1, 0.25]
    for c, f in zip(lp.choices, want_f):
        assert c.f == pytest.approx(f, abs=1e-6)
        assert c.loss == pytest.approx(loss_p(100, f), rel=1e-9)
        assert c.d_loss == pytest.approx(loss_p(100, f) - 4.0004, abs=1e-9)
        assert c.tokens == pytest.approx(tokens_p(5e7, f), rel=1e-9)
    ten = lp.choice("fixed")
    assert ten.d_loss == pytest.approx((1 / 0.09 - 4) / 1e4, rel=1e-6)
    assert ten.tokens / 5e7 == pytest.approx(5 / 3, rel=1e-9)
    assert ten.tokens - 5e7 == pytest.approx(2 / 3 * 5e7, rel=1e-9)
    text = lp.table()
    assert "S = D/(N·B/8) = 100.00" in text
    assert "83,333,333 (1.667 x D, +33,333,333)" in text


def test_tokens_to_match_with_a_moving_fp_term():
    """L = 2 + 1/D + k/(D²f(1−f)), k = (N·B/8)²: at f = 0.1 the target is met at the root x
    = 1/D' of (k/0.09)x² + x − (1/D + 4k/D²) = 0."""
    law = LawParams(2, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, -1, 1)
    N, B, D = 1e3, 4, 1e6
    k = (N * B / 8) ** 2
    target = 2 + 1 / D + 4 * k / D**2
    assert predict(law, N, D / 2, D / 2, B) == pytest.approx(target, rel=1e-12)
    a, c = k / 0.09, -(1 / D + 4 * k / D**2)
    want = 2 * a / (-1 + math.sqrt(1 - 4 * a * c))
    assert tokens_to_match(law, N, B, 0.1, target, D) == pytest.approx(want, rel=1e-9)
    assert tokens_to_match(law, N, B, 0.5, target, D) == D  # already there
    assert tokens_to_match(law, N, B, 0.1, 2.0, D) is None  # below E: out of reach


def test_memory_plan_by_hand():
    mp = memory_plan(M, 1e6, D=1e9)
    assert [o.bits for o in mp.options] == [2, 3, 4, 6, 8]
    assert [o.loss for o in mp.options] == pytest.approx(M_1E6, rel=1e-12)
    assert [o.N for o in mp.options] == pytest.approx([8e6 / b for b in (2, 3, 4, 6, 8)])
    assert mp.best.bits == 4 and mp.to_dict()["best_bits"] == 4
    assert memory_plan(M, 1e7, D=1e9).best.bits == 8
    iso = memory_plan(M, 1e7, flops=1e15)
    assert [o.D for o in iso.options] == pytest.approx(
        [1e15 / (6 * 8e7 / b) for b in (2, 3, 4, 6, 8)]
    )
    assert [o.loss for o in iso.options] == pytest.approx(M_1E7, rel=1e-12)
    lines = mp.table().splitlines()
    assert lines[4].endswith("<- best") and lines[4].split()[0] == "4"
    assert sum("<- best" in ln for ln in lines) == 1


def test_memory_curves_are_best_bits_for_memory():
    law = LawParams(1.8, 300, 0.35, 600, 0.3, 0.4, 0.7, 3, 0.4, 0.1, 0.3, 1000, 0.5, 0.1, -1.5, 0.3)
    Ms = [1e6, 3e6, 1e7]
    curves = memory_curves(law, Ms, D=1e9)
    for i, m in enumerate(Ms):
        for o in best_bits_for_memory(m, law, D=1e9):
            assert curves[o.bits][0][i] == o.f and curves[o.bits][1][i] == o.loss


@pytest.mark.parametrize(
    "text, value",
    [("1000000", 1e6), ("1e6", 1e6), ("1M", 1e6), ("1MB", 1e6), ("100KB", 1e5), ("100 kb", 1e5),
     ("1.5GB", 1.5e9), ("64MiB", 64 * 2**20), ("2KiB", 2048.0), ("1_000", 1e3)],
)  # fmt: skip
def test_parse_bytes(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["", "MB", "1X", "-5", "0", "1iB", "one"])
def test_parse_bytes_refuses(text):
    with pytest.raises(ValueError, match="byte count"):
        parse_bytes(text)


@pytest.fixture(scope="module")
def fits(tmp_path_factory):
    d = tmp_path_factory.mktemp("law")
    FitResult(P, a={"vertex": A_FIT, "argmin": 6.0}).save(d / "p.json")
    FitResult(M).save(d / "m.json")
    return d


BASE = ["--preset", "d2", "--vocab-size", "512", "--tokens", "20e6", "--bits", "4"]


def run_plan(capsys, *args) -> tuple[int, str, str]:
    rc = plan_main([*BASE, *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_plan_law_json_by_hand(fits, capsys, tmp_path):
    rc, out, _ = run_plan(capsys, "--law", str(fits / "p.json"), "--json", "--save", str(tmp_path))
    assert rc == 0
    data = json.loads(out)
    law = data["law"]
    N, D = data["n_params"], data["total_steps"] * data["tokens_per_step"]
    S = D / (N * 4 / 8)
    assert law["N"] == N and law["D"] == D and law["S"] == pytest.approx(S, rel=1e-12)
    assert law["f_opt"] == pytest.approx(0.5, abs=1e-6) and law["a_fit"] == A_FIT
    got = {c["rule"]: c for c in law["choices"]}
    want = {
        "law optimum": 0.5,
        "f-hat, paper a = 6.73": math.exp(-A_PAPER / math.log(S)),
        "f-hat, fitted a = 5.00": math.exp(-A_FIT / math.log(S)),
        "fixed 10 %": 0.1,
        "this config (auto)": data["fraction"],
    }
    assert list(got) == list(want)
    for rule, f in want.items():
        assert got[rule]["f"] == pytest.approx(f, abs=1e-6), rule
        assert got[rule]["loss"] == pytest.approx(loss_p(S, f), rel=1e-9), rule
        assert got[rule]["tokens"] == pytest.approx(tokens_p(D, f), rel=1e-9), rule
    assert got["fixed 10 %"]["tokens"] / D == pytest.approx(5 / 3, rel=1e-9)
    assert got["fixed 10 %"]["d_loss"] == pytest.approx((1 / 0.09 - 4) / S**2, rel=1e-6)
    assert json.loads((tmp_path / "law_plan.json").read_text()) == law


def test_plan_law_text(fits, capsys):
    rc, out, _ = run_plan(capsys, "--law", str(fits / "p.json"))
    assert rc == 0 and "tokens/byte S" in out  # the plan itself, as without --law
    assert f"predicted by the fitted law {fits / 'p.json'}:" in out
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("fixed 10 %"))
    assert "(1.667 x D," in line
    assert "the trainer's S" in out  # exact bytes (scales, FP embeddings) vs N·B/8


def test_plan_memory_by_hand(fits, capsys):
    outs = []
    for mem in ("1M", "1e6", "1000KB", "1000000"):
        rc, out, _ = run_plan(capsys, "--law", str(fits / "m.json"), "--memory", mem)
        assert rc == 0
        outs.append(out)
    assert len(set(outs)) == 1
    table = outs[0].split("predicted best bit width for the memory budget:")[1].splitlines()[3:]
    assert [int(ln.split()[0]) for ln in table] == [2, 3, 4, 6, 8]
    assert [float(ln.split()[5]) for ln in table] == pytest.approx(M_1E6, abs=5e-6)
    assert [ln.endswith("<- best") for ln in table] == [False, False, True, False, False]
    rc, out, _ = run_plan(
        capsys, "--law", str(fits / "m.json"), "--memory", "10MB", "--iso-flops", "1e15", "--json"
    )
    mem = json.loads(out)["law"]["memory"]
    assert mem["best_bits"] == 8 and mem["flops"] == 1e15
    assert [o["loss"] for o in mem["options"]] == pytest.approx(M_1E7, rel=1e-12)
    assert [o["D"] for o in mem["options"]] == pytest.approx(
        [1e15 / (6 * 8e7 / b) for b in (2, 3, 4, 6, 8)]
    )


def test_plan_without_law_is_unchanged(capsys):
    rc, out, _ = run_plan(capsys)
    assert rc == 0 and "tokens/byte S" in out and "law" not in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--memory", "1M"], "--memory and --iso-flops need a fitted law: add --law FIT.json"),
        (
            ["--law", "{p}", "--iso-flops", "1e15"],
            "--iso-flops compares bit widths under --memory BYTES",
        ),
        (["--law", "{missing}"], "--law missing.json: cannot read it as a fit.json"),
        (["--law", "{p}", "--memory", "1M", "--iso-flops", "-1"], "--iso-flops -1.0: must be > 0"),
    ],
)
def test_plan_law_errors(fits, capsys, args, message):
    args = [a.format(p=fits / "p.json", missing=fits / "missing.json") for a in args]
    rc, _, err = run_plan(capsys, *args)
    assert rc == 1 and f"mlx_qat.plan: error: {message}" in err.replace(str(fits) + "/", "")


def test_plan_memory_bad_value_is_a_usage_error(fits, capsys):
    with pytest.raises(SystemExit) as e:
        plan_main([*BASE, "--law", str(fits / "p.json"), "--memory", "lots"])
    assert e.value.code == 2 and "is not a byte count" in capsys.readouterr().err


def test_a_degenerate_fit_is_flagged_and_plan_refuses_sizes_far_outside_the_fit(tmp_path):
    """Rows whose loss does not depend on N (alpha = 0): `mlx_qat.fit` used to fit them without
    a word, and `plan --memory 3` then named a 3-parameter 8-bit model best."""
    import dataclasses
    import subprocess
    import sys

    import numpy as np
    from test_fit_cli import BITS, FRACTIONS, SIGMA, SIZES, TPP, TRUE, make_sweep, sweep_row

    from mlx_qat.fit import fit
    from mlx_qat.fit.results import select_pipeline

    flat = dataclasses.replace(TRUE, alpha=0.0, A=0.3)  # A/N^0: a constant, not a size term
    rng = np.random.default_rng(0)
    rows = []
    for N in SIZES:
        for D in (N * t for t in TPP):
            for b in BITS:
                for f in (0.0, *FRACTIONS):
                    loss = float(predict(flat, N, (1 - f) * D, f * D, None if f == 0 else b))
                    rows.append(
                        sweep_row(N, D, f, b, "fused", loss * math.exp(rng.normal(0, SIGMA)))
                    )
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def cli(*args):
        cmd = [sys.executable, "-m", "mlx_qat", *map(str, args)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    out = tmp_path / "fit"
    proc = cli("fit", tmp_path / "results.jsonl", "--out", out, "--bootstrap", 0, "--no-plots")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = FitResult.load(out / "fit.json")
    assert {d["name"]: d["bound"] for d in res.degenerate}["alpha"] == "lower"
    assert res.n_range == [min(SIZES), max(SIZES)]
    assert "WARNING: degenerate fit: alpha = " in proc.stdout  # the report, and report.txt
    assert "model sizes are not ranked" in (out / "report.txt").read_text()
    assert "degenerate fit: alpha" in proc.stderr
    # 3 bytes: N = 3..12 parameters, a million times below the fitted 8M..32M
    base = ["plan", "--preset", "d2", "--vocab-size", 512, "--law", out / "fit.json"]
    proc = cli(*base, "--memory", 3)
    assert proc.returncode == 1 and "more than 10x outside the sizes the law was fitted on" in (
        proc.stderr
    )
    assert "give a memory between 800,000 and 80,000,000 bytes" in proc.stderr
    # inside the fitted sizes it plans, and says the law is degenerate; d2 (~0.1M) is outside
    proc = cli(*base, "--memory", "4M", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = json.loads(proc.stdout)["law"]["warnings"]
    assert warnings[0].startswith("degenerate fit: alpha") and "outside the fitted" in warnings[1]
    assert "mlx_qat.plan: warning: degenerate fit" in proc.stderr
    # a fit the rows determine has no constant at a bound
    assert fit(select_pipeline(make_sweep(), "fused")[0], n_bootstrap=0).degenerate == []
