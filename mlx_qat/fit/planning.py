"""Plan a run with a fitted law: the QAT fraction, what a wrong one costs, and the bit width
that a memory budget should buy (what `mlx_qat.plan --law fit.json` prints).

For a model of N parameters, D tokens and B bits (S = D / (N·B/8), the law's nominal S):

- `law_plan` compares fraction rules (the law's optimum f*, f̂ with the paper's and the fitted
  a, the fixed 10 % rule, any the caller adds): each one's predicted loss, its loss above the
  optimum, and the tokens D' ≥ D with L(N, (1−f)·D', f·D', B) = L*(D), found on the law
  (doubling D, then bisection in ln D). D' / D − 1 is the rule's cost in tokens.
- `memory_plan`: N = 8·M/B at each B, each at its law-optimal fraction, at a fixed D or at
  iso-FLOP (D = C / (6·N)); the lowest loss wins.
- `law_warnings` and `check_memory_sizes` guard both: a degenerate fit (constants at their
  bounds) is warned about, a model size more than `EXTRAPOLATION`x outside the fitted sizes
  too, and a memory plan whose widths' sizes lie that far outside is refused — a law with
  alpha = 0 once named a 3-parameter 8-bit model the best use of 3 bytes.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

import numpy as np

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
from .result import json_safe

FIXED_RULE = 0.10  # the common "last 10 % of training is QAT" rule
MEMORY_BITS = (2, 3, 4, 6, 8)
MAX_TOKEN_FACTOR = 1e6  # tokens_to_match gives up beyond this many times the budget
EXTRAPOLATION = 10.0  # a size beyond [N_min / 10, 10 N_max] of the fitted rows is not predicted
_UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_BYTES = re.compile(r"^\s*([0-9._]+(?:e[+-]?[0-9]+)?)\s*([kmgt]?)(i?)(b?)\s*$", re.IGNORECASE)


def parse_bytes(text) -> float:
    """A byte count: 1000000, 1e6, 1M, 1MB, 100KB, 1.5GB (powers of 1000), 64MiB (of 1024).

    Example:
        >>> parse_bytes("100KB"), parse_bytes("1e6"), parse_bytes("2KiB")
        (100000.0, 1000000.0, 2048.0)
    """
    m = _BYTES.match(str(text))
    if not m or (m.group(3) and not m.group(2)):
        raise ValueError(f"{text!r} is not a byte count (e.g. 1000000, 1e6, 1M, 100KB, 64MiB)")
    try:
        x = float(m.group(1).replace("_", ""))
    except ValueError:
        raise ValueError(f"{text!r} is not a byte count (e.g. 1e6, 1M, 100KB)") from None
    unit = m.group(2).lower()
    scale = 1024.0 ** "_kmgt".index(unit) if m.group(3) else _UNITS[unit]
    if not (math.isfinite(x) and x > 0):
        raise ValueError(f"{text!r}: a byte count must be > 0")
    return x * scale


def loss_at(law: LawParams, N: float, D: float, bits: int, f: float) -> float:
    """The law's final loss with a QAT fraction f of D tokens."""
    return float(predict(law, N, (1.0 - f) * D, f * D, bits))


def tokens_to_match(
    law: LawParams, N: float, bits: int, f: float, target: float, D: float
) -> float | None:
    """The fewest tokens D' ≥ D at which fraction f reaches the loss `target` on the law.

    D itself when f already gets there; None when not even `MAX_TOKEN_FACTOR`·D does (the
    loss at fraction f levels off above the target).
    """
    if loss_at(law, N, D, bits, f) <= target:
        return float(D)
    lo, hi = math.log(D), math.log(D)
    while loss_at(law, N, math.exp(hi), bits, f) > target:
        lo, hi = hi, hi + math.log(2.0)
        if hi - math.log(D) > math.log(MAX_TOKEN_FACTOR):
            return None
    for _ in range(200):  # bisection in ln D: loss(lo) > target >= loss(hi)
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if loss_at(law, N, math.exp(mid), bits, f) > target else (lo, mid)
        if hi - lo < 1e-12:
            break
    return math.exp(hi)


@dataclass(frozen=True)
class FractionChoice:
    """One rule for the QAT fraction and what it costs against the law's optimum: its loss (inf
    at f = 0, PTQ: outside the law), d_loss above the optimum's, and the tokens it needs to
    reach the optimum's loss (None: out of reach)."""

    rule: str
    f: float
    loss: float
    d_loss: float
    tokens: float | None


@dataclass(frozen=True)
class LawPlan:
    """What a fitted law says about one run (N, D, bits); see the module docstring."""

    N: float
    D: float
    bits: int
    S: float
    a_paper: float
    a_fit: float | None
    f_opt: float
    loss_opt: float
    choices: tuple[FractionChoice, ...]

    def choice(self, rule_prefix: str) -> FractionChoice:
        """The first choice whose rule starts with `rule_prefix`."""
        return next(c for c in self.choices if c.rule.startswith(rule_prefix))

    def to_dict(self) -> dict:
        """JSON-ready (an infinite loss, PTQ at f = 0, is written as null)."""
        return json_safe(asdict(self))

    def table(self) -> str:
        """One line per fraction rule (what `mlx_qat.plan --law` prints)."""
        lines = [
            f"  law at N = {self.N:,.0f}, D = {self.D:,.0f} tokens, {self.bits} bits: "
            f"S = D/(N·B/8) = {self.S:,.2f}",
            f"  {'fraction rule':<22} {'f':>7} {'pred. loss':>11} {'Δ loss':>9}  "
            "tokens to reach the optimum's loss",
        ]
        for c in self.choices:
            if c.rule == "law optimum":
                cost = "-"
            elif c.f <= 0:
                cost = "f = 0 is PTQ: outside the law"
            elif c.tokens is None:
                cost = f"out of reach (> {MAX_TOKEN_FACTOR:g} x D)"
            else:
                cost = f"{c.tokens:,.0f} ({c.tokens / self.D:.3f} x D, +{c.tokens - self.D:,.0f})"
            lines.append(f"  {c.rule:<22} {c.f:>7.4f} {c.loss:>11.5f} {c.d_loss:>+9.5f}  {cost}")
        return "\n".join(lines)


def law_plan(
    law: LawParams,
    N: float,
    D: float,
    bits: int,
    a_fit: float | None = None,
    extra: dict[str, float] | None = None,
    fixed: float = FIXED_RULE,
) -> LawPlan:
    """Compare QAT-fraction rules for one run (N parameters, D tokens, `bits`) on a fitted law.

    Args:
        a_fit: the fitted a of f̂ (`FitResult.a["vertex"]`), or None to leave that rule out.
        extra: more rules, name → fraction (e.g. {"this config": 0.25}).
    Returns:
        LawPlan; its `choices` are the law optimum, f̂ with the paper's a, f̂ with the
        fitted a, the fixed rule, then `extra`, in that order.
    """
    S = float(tokens_per_byte(D, N, bits))
    f_opt = float(optimal_fraction(law, N, D, bits))
    loss_opt = loss_at(law, N, D, bits, f_opt)
    rules = [("law optimum", f_opt), (f"f-hat, paper a = {A_PAPER:.2f}", float(f_hat(S)))]
    if a_fit is not None:
        rules.append((f"f-hat, fitted a = {a_fit:.2f}", float(f_hat(S, a_fit))))
    rules.append((f"fixed {100 * fixed:g} %", fixed))
    rules += list((extra or {}).items())
    choices = []
    for rule, f in rules:
        # f = 0 (f̂ at S <= 1) is PTQ: outside the law, whose QAT penalties diverge there
        loss = loss_at(law, N, D, bits, f) if f > 0 else math.inf
        if rule == "law optimum":
            tokens = float(D)
        else:
            tokens = tokens_to_match(law, N, bits, f, loss_opt, D) if f > 0 else None
        choices.append(FractionChoice(rule, float(f), loss, loss - loss_opt, tokens))
    return LawPlan(
        float(N), float(D), int(bits), S, A_PAPER, a_fit, f_opt, loss_opt, tuple(choices)
    )


@dataclass(frozen=True)
class MemoryPlan:
    """The predicted best bit width for a parameter-memory budget (`memory_plan`)."""

    M_bytes: float
    flops: float | None
    options: tuple[BitsOption, ...]

    @property
    def best(self) -> BitsOption:
        return min(self.options, key=lambda o: o.loss)

    def to_dict(self) -> dict:
        return {
            "M_bytes": self.M_bytes,
            "flops": self.flops,
            "best_bits": self.best.bits,
            "options": [o.to_dict() for o in self.options],
        }

    def table(self) -> str:
        """Losses side by side, the winner marked (what `mlx_qat.plan --memory` prints)."""
        budget = (
            f"iso-FLOP C = {self.flops:.3g} (D = C/(6N))"
            if self.flops is not None
            else f"D = {self.options[0].D:,.0f} tokens"
        )
        lines = [
            f"  memory M = {self.M_bytes:,.0f} bytes, {budget}; N = 8·M/B, each width at its "
            "law-optimal fraction",
            f"  {'bits':>4} {'N':>14} {'D':>14} {'S':>9} {'f*':>7} {'pred. loss':>11}",
        ]
        best = self.best
        for o in self.options:
            mark = "  <- best" if o is best else ""
            lines.append(
                f"  {o.bits:>4} {o.N:>14,.0f} {o.D:>14,.0f} {o.S:>9.2f} {o.f:>7.4f} "
                f"{o.loss:>11.5f}{mark}"
            )
        return "\n".join(lines)


def memory_plan(
    law: LawParams,
    M_bytes: float,
    D: float | None = None,
    flops: float | None = None,
    bits: tuple[int, ...] = MEMORY_BITS,
) -> MemoryPlan:
    """The law's loss per bit width at a fixed parameter memory (`best_bits_for_memory`)."""
    opts = best_bits_for_memory(M_bytes, law, D=D, flops=flops, bits=tuple(bits))
    return MemoryPlan(float(M_bytes), None if flops is None else float(flops), tuple(opts))


def memory_curves(
    law: LawParams,
    M_bytes,
    D: float | None = None,
    flops: float | None = None,
    bits: tuple[int, ...] = MEMORY_BITS,
) -> dict[int, tuple]:
    """`best_bits_for_memory` over many memory sizes at once (vectorised; the same numbers):
    {bits: (f*, loss)} with arrays over `M_bytes`."""
    if (D is None) == (flops is None):
        raise ValueError("memory_curves: give exactly one of D (tokens) or flops")
    M = np.asarray(M_bytes, float)
    out = {}
    for b in bits:
        n = 8.0 * M / b
        d = np.full_like(n, float(D)) if D is not None else float(flops) / (6.0 * n)
        f = np.asarray(optimal_fraction(law, n, d, b))
        out[int(b)] = (f, np.asarray(predict(law, n, (1.0 - f) * d, f * d, b)))
    return out


def fitted_sizes(fitted) -> tuple[float, float] | None:
    """(smallest, largest) N a `FitResult` was fitted on: its `n_range`, else (older fits) the
    sizes of its empirical optima; None when neither is known."""
    if fitted.n_range:
        return float(fitted.n_range[0]), float(fitted.n_range[1])
    sizes = [float(o["N"]) for o in fitted.optima or ()]
    return (min(sizes), max(sizes)) if sizes else None


def law_warnings(fitted, N: float) -> list[str]:
    """What makes the law's plan for a model of N parameters doubtful: a degenerate fit, or N
    more than `EXTRAPOLATION`x outside the fitted sizes (one line each; [] when neither)."""
    from .fitting import degenerate_text

    out = [degenerate_text(fitted.degenerate)] if fitted.degenerate else []
    sizes = fitted_sizes(fitted)
    if sizes and not sizes[0] / EXTRAPOLATION <= N <= sizes[1] * EXTRAPOLATION:
        out.append(
            f"N = {N:,.0f} is more than {EXTRAPOLATION:g}x outside the fitted sizes "
            f"{sizes[0]:,.0f}..{sizes[1]:,.0f}: the law's numbers for it are an extrapolation"
        )
    return out


def check_memory_sizes(fitted, plan: MemoryPlan, where: str = "memory") -> None:
    """ValueError naming the memory range that keeps every width inside when the plan's model
    sizes (N = 8·M/B) lie more than `EXTRAPOLATION`x outside the fitted sizes."""
    sizes = fitted_sizes(fitted)
    if sizes is None:
        return
    lo, hi = sizes[0] / EXTRAPOLATION, sizes[1] * EXTRAPOLATION
    out = [o for o in plan.options if not lo <= o.N <= hi]
    if out:
        ns = ", ".join(f"{o.bits} bits: N = {o.N:,.0f}" for o in out)
        b_min, b_max = min(o.bits for o in plan.options), max(o.bits for o in plan.options)
        raise ValueError(
            f"{where} {plan.M_bytes:,.0f} bytes: {ns} — more than {EXTRAPOLATION:g}x outside "
            f"the sizes the law was fitted on ({sizes[0]:,.0f}..{sizes[1]:,.0f} parameters), "
            f"where it cannot rank bit widths; give a memory between {lo * b_max / 8:,.0f} and "
            f"{hi * b_min / 8:,.0f} bytes, or fit the law on runs of sizes near these"
        )
