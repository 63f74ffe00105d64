"""Scaling-law fitting for paper 000: the loss law L(N, D_fp, D_qat, B), its optimal QAT
fraction, the closed form f̂ = exp(−a / ln S), and fits of both to sweep results.

numpy only at import; scipy (`pip install "mlx_qat[fit]"`) is imported when a fit runs, and
matplotlib (same extra) when `fit.plots` draws. `rows` is the row schema, `results` reads and
merges results files, `report` formats a fit, `baselines` holds the trivial predictors the law
must beat on the held-out size, `planning` turns a fit into advice (`mlx_qat.plan --law`). The
command line: `mlx_qat.fit RESULTS...` (`mlx_qat.cli.fit`); in Python
`fit(load_rows("results.jsonl")).save("fit.json")`.
"""

from .fitting import fit, fit_law
from .law import (
    A_PAPER,
    BitsOption,
    LawParams,
    best_bits_for_memory,
    f_hat,
    optimal_fraction,
    predict,
    tokens_per_byte,
)
from .optima import Optimum, empirical_optima, fit_a, twin_optima
from .planning import LawPlan, MemoryPlan, law_plan, memory_plan, parse_bytes, tokens_to_match
from .result import FitResult
from .results import read_results, select_pipeline
from .rows import Rows, load_rows, parse_rows

__all__ = ["A_PAPER", "BitsOption", "FitResult", "LawParams", "LawPlan", "MemoryPlan",
    "Optimum", "Rows", "best_bits_for_memory", "empirical_optima", "f_hat", "fit", "fit_a",
    "fit_law", "law_plan", "load_rows", "memory_plan", "optimal_fraction", "parse_bytes",
    "parse_rows", "predict", "read_results", "select_pipeline", "tokens_per_byte",
    "tokens_to_match", "twin_optima"]  # fmt: skip
