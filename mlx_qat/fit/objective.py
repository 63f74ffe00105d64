"""The fitting objective: Huber loss on log loss, with its exact gradient, and L-BFGS-B.

The law (see `law`) is E plus terms T_k = c_k · exp(Σ_j s_j p_j φ_j) over log features φ_j.
The optimiser works on a centred vector θ (float64):

    θ = [ln E,  for each term k: ln c'_k, then its exponents p_j]      (16 entries)
    T_k = exp(ln c'_k + Σ_j s_j p_j (φ_j − φ_j^ref)),   ln c_k = ln c'_k − Σ_j s_j p_j φ_j^ref

where φ^ref is the mean feature over the rows, so ln c'_k is the term's log size at a typical
row and no longer swings by p·ln N ≈ 16p when an exponent moves (this decorrelates
coefficients from exponents; the mapping back to LawParams is exact). With the prediction
L̂ = E + Σ_k T_k and the residual r = ln L̂ − ln L,

    J(θ) = Σ_i w_i H_δ(r_i) / (δ² Σ_i w_i),   H_δ(r) = r²/2 (|r| ≤ δ), δ(|r| − δ/2) otherwise,
    ∂J/∂θ = Σ_i w_i clip(r_i, −δ, δ) / (L̂_i δ² Σ w) · ∂L̂_i/∂θ,
    ∂L̂/∂ln E = E,  ∂L̂/∂ln c'_k = T_k,  ∂L̂/∂p_j = T_k s_j (φ_j − φ_j^ref).

Dividing by δ² keeps J of order one, so L-BFGS-B's relative stopping rule does not stop early
when residuals are small. Log-terms are clipped at 50 (L̂ ≤ e^50) to keep line searches finite.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from threadpoolctl import ThreadpoolController

from .law import TERMS, LawParams

# θ layout, derived from law.TERMS: index 0 is ln E.
NAMES: tuple[str, ...] = ("E",) + tuple(n for c, fs, _ in TERMS for n in (c, *(f[0] for f in fs)))
INDEX = {n: i for i, n in enumerate(NAMES)}
COEFS = ("E",) + tuple(c for c, _, _ in TERMS)
FP_NAMES = ("E", "A", "alpha", "B_c", "beta")
PENALTY_NAMES = tuple(n for n in NAMES if n not in FP_NAMES)
# exponent bounds (notes §5.3: [−2, 3]); FP exponents non-negative; ξ symmetric (free in sign)
EXPONENT_BOUNDS = {"alpha": (0.0, 3.0), "beta": (0.0, 3.0), "xi": (-3.0, 3.0)}
DEFAULT_EXPONENT_BOUNDS = (-2.0, 3.0)
_MAX_LOG_TERM = 50.0
FTOL, GTOL = 1e-10, 1e-8  # J is O(1) (scaled by 1/δ²), so these are relative-ish


def require_scipy():
    """scipy.optimize, or an ImportError that says how to install it."""
    try:
        import scipy.optimize as opt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            'mlx_qat.fit needs scipy: pip install "mlx_qat[fit]" (or pip install scipy)'
        ) from e
    return opt


def reference(feats: dict) -> dict:
    """φ^ref: the mean of each finite feature over the rows (0 where none is finite)."""
    out = {}
    for k, v in feats.items():
        v = np.asarray(v)[np.isfinite(v)]
        out[k] = float(v.mean()) if v.size else 0.0
    return out


def to_params(theta: np.ndarray, ref: dict, fp_tokens: str) -> LawParams:
    """Centred θ → LawParams (exact)."""
    vals = {"E": float(np.exp(theta[0]))}
    for coef, factors, _ in TERMS:
        logc = theta[INDEX[coef]]
        for name, feat, sign in factors:
            p = float(theta[INDEX[name]])
            vals[name] = p
            logc -= sign * p * ref[feat]
        vals[coef] = float(np.exp(logc))
    return LawParams(**vals, fp_tokens=fp_tokens)


def from_params(params: LawParams, ref: dict) -> np.ndarray:
    """LawParams → centred θ (a zero coefficient maps to ln c' = −50)."""
    theta = np.zeros(len(NAMES))
    theta[0] = np.log(max(params.E, 1e-22))
    for coef, factors, _ in TERMS:
        logc = np.log(max(getattr(params, coef), 1e-22))
        for name, feat, sign in factors:
            p = getattr(params, name)
            theta[INDEX[name]] = p
            logc += sign * p * ref[feat]
        theta[INDEX[coef]] = logc
    return theta


@dataclass
class Objective:
    """J(θ) and ∂J/∂θ for rows given as law features (all finite), QAT mask and losses."""

    feats: dict
    qat: np.ndarray
    loss: np.ndarray
    weight: np.ndarray
    ref: dict
    delta: float = 1e-3

    def __post_init__(self) -> None:
        # per term: θ index of its coefficient, θ indices of its exponents, the design matrix
        # X[i, j] = s_j (φ_j − φ_j^ref) of row i, and whether it is a QAT-only penalty.
        self.design = []
        for coef, factors, penalty in TERMS:
            X = np.stack([s * (np.asarray(self.feats[f]) - self.ref[f]) for _, f, s in factors], 1)
            idx = np.array([INDEX[n] for n, _, _ in factors])
            self.design.append((INDEX[coef], idx, X, penalty))
        self.log_loss = np.log(self.loss)
        self.scale = 1.0 / (self.delta**2 * float(np.sum(self.weight)))

    def terms(self, theta: np.ndarray) -> list[np.ndarray]:
        out = []
        for c, idx, X, penalty in self.design:
            t = np.exp(np.minimum(theta[c] + X @ theta[idx], _MAX_LOG_TERM))
            out.append(np.where(self.qat, t, 0.0) if penalty else t)
        return out

    def predict(self, theta: np.ndarray) -> np.ndarray:
        return np.exp(theta[0]) + sum(self.terms(theta))

    def __call__(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        terms = self.terms(theta)
        E = np.exp(theta[0])
        pred = E + sum(terms)
        r = np.log(pred) - self.log_loss
        d = self.delta
        h = np.where(np.abs(r) <= d, 0.5 * r * r, d * (np.abs(r) - 0.5 * d))
        g = self.weight * np.clip(r, -d, d) / pred * self.scale
        grad = np.empty_like(theta)
        grad[0] = np.sum(g) * E
        for (c, idx, X, _), t in zip(self.design, terms):
            gt = g * t
            grad[c] = np.sum(gt)
            grad[idx] = gt @ X
        return float(np.sum(self.weight * h) * self.scale), grad


def bounds(max_loss: float) -> list[tuple[float, float]]:
    """Box bounds on θ: ln E ≤ ln max L; ln c' in [−30, ln 10·max L]; exponents as above."""
    top = float(np.log(10.0 * max_loss))
    out = []
    for n in NAMES:
        if n == "E":
            out.append((np.log(1e-3), float(np.log(max_loss))))
        elif n in COEFS:
            out.append((-30.0, top))
        else:
            out.append(EXPONENT_BOUNDS.get(n, DEFAULT_EXPONENT_BOUNDS))
    return out


def minimize(
    obj: Objective,
    theta0: np.ndarray,
    free: list[int],
    box: list[tuple[float, float]],
    maxiter: int = 2000,
) -> tuple[np.ndarray, float]:
    """L-BFGS-B over the `free` entries of θ (others fixed at θ0). Returns (θ, J)."""
    opt = require_scipy()
    theta0 = np.asarray(theta0, float)
    lo, hi = np.array([b[0] for b in box]), np.array([b[1] for b in box])
    x0 = np.clip(theta0[free], lo[free], hi[free])

    def fun(x):
        th = theta0.copy()
        th[free] = x
        v, g = obj(th)
        return v, g[free]

    # scipy's bundled OpenBLAS (prefix libscipy_openblas; not the one MLX uses) on one thread:
    # L-BFGS-B's BLAS calls are on 16 × m matrices, where threads only add hand-offs (a fit ran
    # 12x slower on a busy 2-core machine). Restored on exit; a no-op where it is not found.
    with ThreadpoolController().select(prefix="libscipy_openblas").limit(limits=1):
        res = opt.minimize(
            fun,
            x0,
            jac=True,
            method="L-BFGS-B",
            bounds=[box[i] for i in free],
            options={"maxiter": maxiter, "ftol": FTOL, "gtol": GTOL},
        )
    th = theta0.copy()
    th[free] = res.x
    return th, float(res.fun)
