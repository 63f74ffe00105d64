"""`diagnose_model`: the four measurements on a prepared model and fixed batches, and the verdict.

Every loss is evaluated on the same batches, fake quant off, the covered layers moved by a
`Probe` (restored afterwards). Evaluations (each a pass over the batches): line scan
alpha_points (13); random directions random_draws × len(random_scales) (2 × 5); stochastic
rounding sr_draws (4; affine only); per-unit scans units × len(layer_alphas) (4 each), + 1 for
the mixed-precision check. All draws come from `mx.random.key(seed)`, split per purpose, so
the same seed, model and batches give the same numbers. Memory: besides the model, the RTN
point of every covered layer and, while its scan runs, one random direction or rounding.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import mlx.core as mx
import mlx.nn as nn

from ..eval_modes import basin_level, batch_losses, bits_per_byte, eval_mode
from ..quant.spec import QuantSpec
from . import verdict as rules
from .measures import basin_edge, finite, kappa, wall_slope
from .probe import Probe

logger = logging.getLogger(__name__)

ATTRIBUTION = ("layer", "block", "off")
_BLOCK = re.compile(r"^(.*?\blayers\.\d+)\.")


@dataclass
class DiagnoseSettings:
    """What `diagnose_model` measures, and how finely (defaults: cheap, seeded).

    The line scan has `alpha_points` points in [0, alpha_max]; `random_scales` are the random
    scan's steps in units of the rounding error; `attribution` is "layer", "block" (each
    `layers.<i>` block, every other layer alone) or "off"; 1 is always added to the scans'
    steps; ε = max(`tolerance` nats, `noise_z` standard errors of the PTQ gap).
    """

    alpha_max: float = 1.5
    alpha_points: int = 13
    random_draws: int = 2
    random_scales: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
    sr_draws: int = 4
    attribution: str = "layer"
    layer_alphas: tuple[float, ...] = (0.25, 0.5, 1.0, 1.5)
    tolerance: float = rules.TOLERANCE
    noise_z: float = rules.NOISE_Z
    seed: int = 0

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ValueError(f"diagnose: {name}={getattr(self, name)!r}: {what}")

        need(self.alpha_max >= 1, "alpha_max", "must be >= 1 (the scan must reach the PTQ point)")
        need(self.alpha_points >= 3, "alpha_points", "must be >= 3")
        need(self.random_draws >= 0, "random_draws", "must be >= 0")
        need(all(s > 0 for s in self.random_scales), "random_scales", "must all be > 0")
        need(self.sr_draws >= 0, "sr_draws", "must be >= 0")
        need(self.attribution in ATTRIBUTION, "attribution", f"choose {', '.join(ATTRIBUTION)}")
        need(all(a > 0 for a in self.layer_alphas), "layer_alphas", "must all be > 0")
        need(self.tolerance > 0, "tolerance", "must be > 0")
        need(self.noise_z >= 0, "noise_z", "must be >= 0")
        self.random_scales = tuple(sorted(set(map(float, self.random_scales))))
        self.layer_alphas = tuple(sorted({*map(float, self.layer_alphas), 1.0}))

    @property
    def alphas(self) -> list[float]:
        n = self.alpha_points - 1
        return sorted({*(round(i * self.alpha_max / n, 12) for i in range(n + 1)), 1.0})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["random_scales"], d["layer_alphas"] = list(self.random_scales), list(self.layer_alphas)
        return d


def units_of(paths: Sequence[str], attribution: str) -> dict[str, list[str]]:
    """{unit name: layer paths} for per-layer attribution ("block": `...layers.<i>` prefixes)."""
    if attribution == "off":
        return {}
    units: dict[str, list[str]] = {}
    for p in paths:
        m = _BLOCK.match(p) if attribution == "block" else None
        units.setdefault(m.group(1) if m else p, []).append(p)
    return units


def diagnose_model(
    model: nn.Module,
    batches: Sequence[mx.array],
    bytes_per_token: float,
    layers: dict[str, tuple[nn.Module, QuantSpec]],
    settings: DiagnoseSettings | None = None,
    scale_dtype: mx.Dtype | None = None,
) -> dict:
    """Line scan, random directions, stochastic rounding, attribution and verdict of the
    `layers` {path: (QAT layer, target spec)} of a prepared `model` (restored afterwards), on
    fixed `batches`, scales stored in `scale_dtype` (None: each weight's dtype).

    Returns a JSON-ready dict: "float", "ptq", "gap", "eps", "scan", "random", "stochastic",
    "layers", "mixed", "formats", "verdict" (definitions in `mlx_qat.diagnose`).
    """
    st = settings or DiagnoseSettings()
    if not layers:
        raise ValueError("diagnose: no layer is quantized at the target format; nothing to do")
    batches = list(batches)
    key_rand, key_sr = mx.random.split(mx.random.key(st.seed), 2)
    with eval_mode(model, "fp"):
        probe = Probe(model, layers, scale_dtype)
        try:
            return _measure(probe, batches, bytes_per_token, st, key_rand, key_sr)
        finally:
            probe.restore()


def _measure(probe: Probe, batches, bpt, st: DiagnoseSettings, key_rand, key_sr) -> dict:
    def loss_at(alpha, direction=None, only=None):
        probe.along(alpha, direction, only)
        return batch_losses(probe.model, batches, bpt)

    alphas = st.alphas
    scan = [loss_at(a) for a in alphas]
    l0, per0 = scan[0]
    l1, per1 = scan[alphas.index(1.0)]
    gap = l1 - l0
    eps, se = basin_level(per1, per0, st.tolerance, st.noise_z)
    rise = [loss - l0 for loss, _ in scan]
    a_star, extrap = basin_edge(alphas, rise, eps)
    out = {
        "float": {"loss": l0, "bpb": bits_per_byte(l0, bpt)},
        "ptq": {"loss": l1, "bpb": bits_per_byte(l1, bpt)},
        "gap": gap,
        "gap_rel": gap / l0 if l0 else None,
        "eps": eps,
        "eps_rule": {"tolerance": st.tolerance, "noise_se": se, "noise_z": st.noise_z},
        "scan": {
            "alphas": alphas,
            "loss": [loss for loss, _ in scan],
            "rise": rise,
            "alpha_star": finite(a_star),
            "extrapolated": extrap,
            "kappa_hat": kappa(a_star),
            "wall_slope": wall_slope(alphas, rise, a_star),
        },
    }
    logger.info("diagnose: float %.4f, PTQ %.4f, kappa %.2f", l0, l1, kappa(a_star))
    out["random"] = _random(probe, loss_at, l0, eps, st, key_rand)
    out["stochastic"] = _stochastic(probe, batches, bpt, l0, l1, eps, st, key_sr)
    out["layers"] = _attribution(loss_at, l0, eps, probe.paths, st)
    out["mixed"] = _mixed(probe, batches, bpt, l0, eps, out["layers"], gap)
    out["formats"] = _formats(probe, batches, bpt, l0, eps, gap)
    out["verdict"] = rules.verdict(out)
    return out


def _random(probe, loss_at, l0, eps, st, key) -> dict | None:
    if not st.random_draws:
        return None
    scales = list(st.random_scales)
    draws = []
    for k in mx.random.split(key, st.random_draws):
        d = probe.random_direction(k)
        draws.append([loss_at(s, d)[0] for s in scales])
    mean = [sum(col) / len(col) for col in zip(*draws)]
    radius, extrap = basin_edge([0.0, *scales], [0.0, *(m - l0 for m in mean)], eps)
    at1 = mean[scales.index(1.0)] - l0 if 1.0 in scales else None
    out = {"scales": scales, "loss": draws, "mean": mean, "rise_at_1": at1}
    return {**out, "radius": finite(radius), "extrapolated": extrap}


def _stochastic(probe, batches, bpt, l0, l1, eps, st, key) -> dict | None:
    if not st.sr_draws:
        return None
    odd = sorted({str(s) for s in probe.specs.values() if not s.is_affine})
    if odd:
        return {"skipped": f"stochastic rounding covers affine formats only, not {odd}"}
    losses = []
    for k in mx.random.split(key, st.sr_draws):
        probe.set(probe.stochastic_point(k))
        losses.append(batch_losses(probe.model, batches, bpt)[0])
    best, mean = min(losses), sum(losses) / len(losses)
    out = {"loss": losses, "best": best, "best_gap": best - l0, "mean": mean}
    return {**out, "gain_over_rtn": l1 - best}


def _attribution(loss_at, l0, eps, paths, st) -> list[dict]:
    rows = []
    alphas = [0.0, *st.layer_alphas]
    for name, members in units_of(paths, st.attribution).items():
        rise = [0.0] + [loss_at(a, only=members)[0] - l0 for a in st.layer_alphas]
        a_star, extrap = basin_edge(alphas, rise, eps)
        row = {"unit": name, "layers": members, "alphas": alphas, "rise": rise}
        row.update(gap=rise[alphas.index(1.0)], alpha_star=finite(a_star), extrapolated=extrap)
        rows.append({**row, "kappa_hat": kappa(a_star)})
    rows.sort(key=lambda r: (-r["kappa_hat"], r["unit"]))
    return rows


def _mixed(probe, batches, bpt, l0, eps, units, gap) -> dict | None:
    """The loss with the units whose own rounding leaves the basin (κ̂ ≥ 1) kept at higher
    precision, when that costs at most `verdict.MIXED_EXTRA_BITS` bits per weight."""
    hot = [u for u in units if u["kappa_hat"] >= 1]
    if not hot or gap <= eps:
        return None
    sizes = {p: probe.w0[p].size for p in probe.paths}
    points, kept, extra = dict(probe.q), {}, 0.0
    for u in hot:
        for p in u["layers"]:
            spec = probe.specs[p]
            high = rules.higher_precision(spec)
            points[p] = probe.w0[p] if high is None else probe.rtn(p, high)
            kept[p] = str(high) if high else "float"
            extra += sizes[p] * ((high.bits if high else rules.FLOAT_BITS) - spec.bits)
    out = {"units": [u["unit"] for u in hot], "layers": kept}
    out["extra_bits"] = extra / sum(sizes.values())
    if out["extra_bits"] > rules.MIXED_EXTRA_BITS:
        return out  # dearer than the next bit width: not evaluated
    probe.set(points)
    loss = batch_losses(probe.model, batches, bpt)[0]
    return {**out, "loss": loss, "gap": loss - l0}


def _formats(probe, batches, bpt, l0, eps, gap) -> list[dict] | None:
    """The RTN gap at each of `verdict.alternatives` (every covered layer's format moved the
    same way), with its stored bits per weight: what "change the format" chooses from."""
    if gap <= eps:
        return None
    sizes = {p: probe.w0[p].size for p in probe.paths}
    rows = []
    for name, change in rules.alternatives(probe.specs.values()):
        specs = {p: change(spec) for p, spec in probe.specs.items()}
        probe.set({p: probe.rtn(p, spec) for p, spec in specs.items()})
        loss = batch_losses(probe.model, batches, bpt)[0]
        bpw = sum(sizes[p] * specs[p].bits_per_weight() for p in specs) / sum(sizes.values())
        rows.append({"change": name, "bits_per_weight": bpw, "loss": loss, "gap": loss - l0})
    probe.restore()
    return rows or None
