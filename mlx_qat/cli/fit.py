"""`mlx_qat.fit`: fit the loss law and the optimal-fraction constant a to sweep results
(`mlx_qat.fit`), print the report, save the fit and its figures.

    mlx_qat.fit runs/sweep_tiny/results.jsonl               # -> runs/sweep_tiny/fit/
    mlx_qat.fit machine_a/ machine_b/ --out fit --bootstrap 500   # a sweep split across machines

RESULTS (files, or folders searched for results.jsonl) are merged (`fit.results.read_results`:
one run's rows kept once; one config_hash with two different results is refused; rows of
several data sets need `--mix-data`). The law is fitted on the FP anchors and the QAT runs of
one `--pipeline`; classic runs feed the fused-vs-classic comparison. Writes DIR/fit.json (what
`plan --law` reads), report.txt, the PNGs and fit.yaml; DIR defaults to `fit/` next to the
first results file.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from ..fileio import atomic_write_text
from .common import add_common, add_renamed, save_resolved, verb_main, verb_parser

log = logging.getLogger("mlx_qat.fit")


class _Paths(argparse.Action):
    """RESULTS...: none given stays None, so that `--config fit.yaml` can supply them."""

    def __call__(self, parser, namespace, values, _option_string=None):
        setattr(namespace, self.dest, list(values) or None)


def build_parser():
    """The flags of `mlx_qat.fit`."""
    p = verb_parser(
        "fit",
        "Fit the QAT loss law L(N, D_fp, D_qat, B) and f-hat = exp(-a / ln S) to "
        "sweep results; print the report, write fit.json and plots.",
    )
    p.add_argument(
        "results",
        nargs="*",
        action=_Paths,
        metavar="RESULTS",
        help="results.jsonl files, or folders (every results.jsonl in and below them); rows "
        "are merged",
    )
    p.add_argument("--out", metavar="DIR", help="output folder (default: fit/ next to the first)")
    p.add_argument(
        "--bootstrap",
        type=int,
        default=200,
        metavar="N",
        help="bootstrap resamples for the confidence intervals (0: none)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument(
        "--pipeline",
        choices=("fused", "classic"),
        default="fused",
        help="the pipeline whose QAT runs the law is fitted on (FP anchors always count)",
    )
    p.add_argument(
        "--fp-tokens",
        choices=("total", "fp"),
        default="total",
        help="tokens in the law's FP term: all of D (QAT tokens train too) or D_fp only",
    )
    p.add_argument(
        "--mix-data",
        action="store_true",
        help="fit rows of several data sets together (rows record their data's identity: "
        "without this flag, rows of two data sets are refused)",
    )
    plot = p.add_argument(
        "--plot",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write the PNG figures (needs matplotlib)",
    )
    add_renamed(p, "--plots", plot)
    add_common(p)
    return p


def _run(opts: dict) -> int:
    from .. import fit as ft
    from ..fit.report import format_report
    from ..fit.results import (
        check_one_data,
        find_results,
        pipeline_pairs,
        read_results,
        select_pipeline,
    )

    if not opts.get("results"):
        raise ValueError("give the sweep results: mlx_qat.fit RESULTS.jsonl|DIR [...]")
    if opts["bootstrap"] < 0:
        raise ValueError(f"--bootstrap {opts['bootstrap']}: must be >= 0")
    files = find_results(opts["results"])
    out = Path(opts["out"]) if opts.get("out") else files[0].parent / "fit"
    opts["out"] = str(out)
    merged = read_results(files)
    n_data = check_one_data(merged, opts["mix_data"])
    rows, counts = select_pipeline(merged.rows, opts["pipeline"])
    counts["data_sets"] = n_data
    t0 = time.time()
    log.info(
        "mlx_qat.fit: %d rows (%d FP, %d %s QAT); fitting, then %d bootstrap resamples",
        len(rows), counts["fp"], counts["qat"], opts["pipeline"], opts["bootstrap"],
    )  # fmt: skip
    try:
        res = ft.fit(
            rows, fp_tokens=opts["fp_tokens"], n_bootstrap=opts["bootstrap"], seed=opts["seed"]
        )
    except ImportError as e:  # scipy missing: one line, not a traceback
        raise RuntimeError(str(e)) from None
    log.info("mlx_qat.fit: fitted in %.1f s", time.time() - t0)
    pairs = pipeline_pairs(merged.rows)
    twins = ft.twin_optima(merged.rows)  # f* of the loss and of the penalty, with twins
    report = format_report(res, merged, counts, pairs, opts["pipeline"], twins)
    out.mkdir(parents=True, exist_ok=True)
    res.save(out / "fit.json")
    atomic_write_text(out / "report.txt", report + "\n")
    written = [out / "fit.json", out / "report.txt"]
    if opts["plot"]:
        try:
            from ..fit.plots import write_plots

            written += write_plots(res, rows, out, all_rows=merged.rows)
        except ImportError as e:  # the fit is saved; the figures are the optional part
            log.warning("mlx_qat.fit: no plots: %s", e)
    written.append(save_resolved(out / "fit.yaml", "fit", opts))
    print(report)
    print(f"\nmlx_qat.fit: wrote {', '.join(str(p) for p in written)}")
    return 0


main = verb_main("fit", build_parser, _run)
