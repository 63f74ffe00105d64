"""`QATConfig`: which layers get fake-quantized, to which format, with which quantizer.

Per-layer resolution (first rule that names the layer wins):

1. `overrides`: `{path_or_glob: spec}` — exact module paths first, then globs (`fnmatch`) in
   insertion order. A value is a `QuantSpec`, an mlx-lm style dict (`{"group_size", "bits",
   "mode"}`; missing fields take the mode's defaults exactly as `to_quantized(**d)` would),
   `True` (the default spec) or `None`/`False` (leave the layer in float).
2. `predicate(path, module)`: same return values, the shape of mlx-lm's `class_predicate`.
3. The model's own `quant_predicate` (mlx-lm's per-architecture recommendation, e.g. MoE router
   gates at 8 bits), when `use_model_predicate` is set, so QAT deploys what `mlx_lm.convert`
   would.
4. Defaults: `weights` for linear and expert layers; `embedding_spec` for embeddings and output
   heads (`head_names`, tied or not).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .quant.learned_affine import SCALE_GRADS
from .quant.quantizers import QUANTIZERS
from .quant.spec import AFFINE_BITS, QuantSpec

# What an override or predicate may return for one layer.
LayerRule = QuantSpec | dict | bool | None
Predicate = Callable[[str, nn.Module], LayerRule]

_SPEC_KEYS = {"mode", "bits", "group_size"}


def spec_from_rule(rule: QuantSpec | dict, where: str = "override") -> QuantSpec:
    """A `QuantSpec` from a spec or an mlx-lm style per-layer dict (missing fields as in
    mlx-lm: mode "affine", bits/group size the mode's defaults)."""
    if isinstance(rule, QuantSpec):
        return rule
    if not isinstance(rule, dict):
        raise TypeError(f"{where}: expected a QuantSpec, dict, bool or None, got {rule!r}")
    extra = set(rule) - _SPEC_KEYS - {"quantize_input"}
    if extra or rule.get("quantize_input"):
        bad = sorted(extra) or ["quantize_input=True"]
        raise ValueError(
            f"{where}: {rule!r} has unsupported keys {bad}; QAT supports weight-only "
            f"formats given by {sorted(_SPEC_KEYS)}"
        )
    return QuantSpec.for_mode(rule.get("mode", "affine"), rule.get("bits"), rule.get("group_size"))


def _spec_field(value: Any, name: str) -> QuantSpec | None:
    if value is None or isinstance(value, QuantSpec):
        return value
    return spec_from_rule(value, f"QATConfig.{name}")


@dataclass
class QATConfig:
    """How `prepare` turns a float model into a QAT model.

    Args:
        weights: format of linear and expert (SwitchLinear) weights.
        embeddings: format of embedding tables and output heads; None = `weights`, raised to
            `embeddings_min_bits` (the compute-optimal recipe: max(B, 4)) when that is set.
        quantizer: "minmax", "lsq" or "learned_affine" (the last two need affine formats).
        lsq_per: LSQ step granularity, "row" or "group".
        scale_grad: learned_affine's grid gradient: "ste" (straight-through, the rounding
            error) or "fixed_codes" (DWQ's, codes held fixed); see `quant/learned_affine.py`.
        scale_dtype: storage dtype of scales/biases in the forward and at export, e.g.
            "float16"; None = each weight's dtype.
        overrides, predicate: rules 1 and 2 of the module header (a predicate cannot be saved:
            `to_dict` refuses it).
        use_model_predicate: rule 3.
        head_names: last path components that mark an output head (spec = embeddings).
    """

    weights: QuantSpec = field(default_factory=QuantSpec)
    embeddings: QuantSpec | None = None
    embeddings_min_bits: int | None = None
    quantizer: str = "minmax"
    lsq_per: str = "row"
    scale_grad: str = "ste"
    scale_dtype: str | None = None
    overrides: dict[str, LayerRule] = field(default_factory=dict)
    predicate: Predicate | None = None
    use_model_predicate: bool = True
    head_names: tuple[str, ...] = ("lm_head",)

    def __post_init__(self) -> None:
        self.weights = _spec_field(self.weights, "weights") or QuantSpec()
        self.embeddings = _spec_field(self.embeddings, "embeddings")
        if self.quantizer not in QUANTIZERS:
            raise ValueError(
                f"QATConfig(quantizer={self.quantizer!r}): choose one of {', '.join(QUANTIZERS)}"
            )
        if self.lsq_per not in ("row", "group"):
            raise ValueError(f"QATConfig(lsq_per={self.lsq_per!r}): choose 'row' or 'group'")
        if self.scale_grad not in SCALE_GRADS:
            raise ValueError(
                f"QATConfig(scale_grad={self.scale_grad!r}): choose one of {', '.join(SCALE_GRADS)}"
            )
        if self.scale_grad != "ste" and self.quantizer != "learned_affine":
            raise ValueError(
                f"QATConfig(scale_grad={self.scale_grad!r}) is a learned_affine option; "
                f"quantizer={self.quantizer!r} has its own gradient: use quantizer='learned_affine'"
            )
        if self.scale_dtype is not None and not isinstance(
            getattr(mx, str(self.scale_dtype), None), mx.Dtype
        ):
            raise ValueError(
                f"QATConfig(scale_dtype={self.scale_dtype!r}): use an MLX float dtype name "
                "such as 'float16', 'bfloat16' or 'float32', or None"
            )
        if self.embeddings_min_bits is not None and self.embeddings_min_bits not in AFFINE_BITS:
            raise ValueError(
                f"QATConfig(embeddings_min_bits={self.embeddings_min_bits}): use one of "
                f"{', '.join(map(str, AFFINE_BITS))} or None"
            )
        self.head_names = tuple(self.head_names)
        self.overrides = {
            str(k): self._normalize_rule(v, f"QATConfig.overrides[{k!r}]")
            for k, v in dict(self.overrides).items()
        }
        self._check_quantizer(self.weights, "weights")
        self._check_quantizer(self.embedding_spec, "embeddings")
        for key, rule in self.overrides.items():
            if isinstance(rule, QuantSpec):
                self._check_quantizer(rule, f"overrides[{key!r}]")

    @classmethod
    def with_bits(
        cls,
        bits: int,
        group_size: int = 64,
        mode: str = "affine",
        embeddings_min_bits: int | None = 4,
        **kwargs: Any,
    ) -> QATConfig:
        """The compute-optimal QAT recipe: weights at `bits`, embeddings/head at max(bits, 4)."""
        spec = QuantSpec.for_mode(mode, bits, group_size if mode == "affine" else None)
        return cls(weights=spec, embeddings_min_bits=embeddings_min_bits, **kwargs)

    @property
    def embedding_spec(self) -> QuantSpec:
        if self.embeddings is not None:
            return self.embeddings
        w, lo = self.weights, self.embeddings_min_bits
        if lo is None or w.bits >= lo:
            return w
        if w.is_affine:
            return replace(w, bits=lo)
        # An fp format below the floor: fall back to affine at the floor, smallest group.
        return QuantSpec("affine", lo, 32)

    @property
    def mx_scale_dtype(self) -> mx.Dtype | None:
        """`scale_dtype` as an MLX dtype (None: each weight's dtype)."""
        return None if self.scale_dtype is None else getattr(mx, self.scale_dtype)

    def is_embedding_like(self, path: str, module: nn.Module) -> bool:
        """True for embedding tables and output heads (`embedding_spec`)."""
        from .layers import QATEmbedding

        if isinstance(module, (nn.Embedding, nn.QuantizedEmbedding, QATEmbedding)):
            return True
        return path.rsplit(".", 1)[-1] in self.head_names

    def default_spec(self, path: str, module: nn.Module) -> QuantSpec:
        """The spec a layer gets when no rule names it."""
        return self.embedding_spec if self.is_embedding_like(path, module) else self.weights

    def resolve(
        self, path: str, module: nn.Module, model: nn.Module | None = None
    ) -> tuple[QuantSpec | None, str]:
        """The spec for one layer (None: leave in float) and which rule decided it."""
        for key in self._matching_overrides(path):
            return self._apply(self.overrides[key], path, module, f"override {key!r}")
        if self.predicate is not None:
            rule = self._normalize_rule(self.predicate(path, module), f"predicate({path!r})")
            return self._apply(rule, path, module, "predicate")
        model_predicate = getattr(model, "quant_predicate", None) if model is not None else None
        if self.use_model_predicate and callable(model_predicate):
            rule = self._normalize_rule(model_predicate(path, module), "model quant_predicate")
            return self._apply(rule, path, module, "the model's quant_predicate")
        return self.default_spec(path, module), "default"

    def check_overrides(self, model: nn.Module, where: str = "overrides") -> None:
        """Raise ValueError for an `overrides` key that decides no layer of `model` (a typo, or
        shadowed by earlier rules), which would silently leave layers at another format."""
        paths = list(quantization_map(model))
        unused = [
            k for k in self.overrides if not any(k == p or fnmatch.fnmatchcase(p, k) for p in paths)
        ]
        if unused:
            names = dict.fromkeys(re.sub(r"\.\d+\.", ".*.", p) for p in paths)
            raise ValueError(
                f"{where}: {', '.join(map(repr, unused))}: no quantizable layer of this model "
                f"matches; its {len(paths)} layers are: {', '.join(names)}"
            )
        winner = {p: next(self._matching_overrides(p), None) for p in paths}
        for key in self.overrides:
            if key in winner.values():
                continue
            beaten = {winner[p] for p in paths if key == p or fnmatch.fnmatchcase(p, key)}
            raise ValueError(
                f"{where}: {key!r} is shadowed: every layer it matches is decided by "
                f"{', '.join(map(repr, sorted(beaten)))} (an exact path first, then globs in "
                f"order), so it would never apply; move it before those, or remove it"
            )

    def _matching_overrides(self, path: str):
        if path in self.overrides:
            yield path
        for key in self.overrides:
            if key != path and fnmatch.fnmatchcase(path, key):
                yield key

    def _apply(self, rule, path, module, source) -> tuple[QuantSpec | None, str]:
        if rule is None or rule is False:
            return None, f"excluded by {source}"
        spec = self.default_spec(path, module) if rule is True else rule
        self._check_quantizer(spec, path)
        return spec, source

    def _normalize_rule(self, rule: Any, where: str) -> QuantSpec | bool | None:
        if rule is None or isinstance(rule, bool):
            return rule
        if isinstance(rule, int):  # `{"lm_head": 8}`: affine at that width, default group
            return replace(self.weights if self.weights.is_affine else QuantSpec(), bits=rule)
        return spec_from_rule(rule, where)

    def _check_quantizer(self, spec: QuantSpec, where: str) -> None:
        if self.quantizer != "minmax" and not spec.is_affine:
            raise ValueError(
                f"QATConfig(quantizer={self.quantizer!r}): {where} uses {spec.mode}, but "
                f"{self.quantizer} learns affine grids; use an affine format or 'minmax'"
            )

    def to_dict(self) -> dict:
        """Plain data (YAML/JSON-able); `from_dict` inverts it."""
        if self.predicate is not None:
            raise ValueError(
                f"QATConfig.to_dict: predicate={self.predicate!r} cannot be saved; express it "
                "as `overrides` (module paths or globs) to make the config reproducible"
            )

        def enc(v):
            return v.asdict() if isinstance(v, QuantSpec) else v

        out = {f.name: enc(getattr(self, f.name)) for f in fields(self) if f.name != "predicate"}
        out["overrides"] = {k: enc(v) for k, v in self.overrides.items()}
        out["head_names"] = list(self.head_names)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> QATConfig:
        """Build from `to_dict` output (or hand-written YAML); unknown keys raise."""
        names = {f.name for f in fields(cls)} - {"predicate"}
        unknown = set(d) - names
        if unknown:
            raise ValueError(
                f"QATConfig: unknown keys {sorted(unknown)}; valid keys: {sorted(names)}"
            )
        return cls(**d)

    def to_mlx_quantization(self, model: nn.Module) -> dict:
        """The `"quantization"` block of config.json that makes mlx-lm rebuild `model` (QAT
        layers or stock quantized ones): the global format of `weights`, one entry per path
        whose format differs, and `false` for each quantizable layer left in float."""
        glob = self.weights.to_mlx()
        out: dict[str, Any] = dict(glob)
        for path, spec in quantization_map(model).items():
            if spec is None:
                out[path] = False
            elif spec.to_mlx() != glob:
                out[path] = spec.to_mlx()
        return out


def quantization_map(model: nn.Module) -> dict[str, QuantSpec | None]:
    """`{path: spec}` of every quantizable layer of `model` (QAT layers, stock quantized
    modules, float leaves with `to_quantized`); None for float layers."""
    from .layers import QATLayer

    out: dict[str, QuantSpec | None] = {}
    is_module = nn.Module.is_module
    for path, m in model.named_modules()[::-1]:
        if not path:
            continue
        if isinstance(m, QATLayer):
            out[path] = m.spec
        elif "scales" in m and hasattr(m, "bits") and hasattr(m, "group_size"):
            out[path] = QuantSpec(getattr(m, "mode", "affine"), m.bits, m.group_size)
        elif hasattr(m, "to_quantized") and not tree_flatten(m.children(), is_leaf=is_module):
            out[path] = None
    return out
