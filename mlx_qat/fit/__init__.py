"""Scaling-law fitting for paper 000: the loss law L(N, D_fp, D_qat, B), its optimal QAT
fraction, the closed form f̂ = exp(−a / ln S), and fits of both to sweep results.

numpy only at import; scipy and matplotlib (`pip install "mlx_qat[fit]"`) when a fit runs or
`fit.plots` draws. `rows`: the row schema; `results`: reading results files; `report`, `plots`:
a fit's text and figures; `baselines`: what the law must beat; `planning`: advice from a fit
(`mlx_qat.plan --law`). CLI `mlx_qat.fit RESULTS...`; Python `fit(load_rows(path)).save(out)`.
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
