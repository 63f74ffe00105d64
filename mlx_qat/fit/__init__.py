"""Scaling-law fitting for paper 000: the loss law L(N, D_fp, D_qat, B), its optimal QAT
fraction, the closed form f̂ = exp(−a / ln S), and fits of both to sweep results.

numpy only at import; scipy (`pip install "mlx_qat[fit]"`) is imported when a fit runs.

Example:
    >>> from mlx_qat.fit import fit, load_rows  # doctest: +SKIP
    >>> res = fit(load_rows("sweep/results.jsonl"))  # doctest: +SKIP
    >>> res.save("sweep/fit.json")  # doctest: +SKIP
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
from .optima import Optimum, empirical_optima, fit_a
from .result import FitResult
from .rows import Rows, load_rows, parse_rows

__all__ = [
    "A_PAPER",
    "BitsOption",
    "FitResult",
    "LawParams",
    "Optimum",
    "Rows",
    "best_bits_for_memory",
    "empirical_optima",
    "f_hat",
    "fit",
    "fit_a",
    "fit_law",
    "load_rows",
    "optimal_fraction",
    "parse_rows",
    "predict",
    "tokens_per_byte",
]
