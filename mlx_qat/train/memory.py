"""What one training step needs in memory, and refusing a run that cannot fit.

A step of `B` sequences of `T` tokens on a model with `n` layers, width `d`, MLP width `m`,
`h` attention heads and vocabulary `V` keeps alive, in bytes (`a` = activation dtype size):

    weights, gradients, AdamW m and v      4 · P            (P = parameter bytes; +1 · P for
                                                             the gradient sum with grad_accum)
    activations saved for the backward     n · B · T · (8·d + 3·m) · a
    attention scores and probabilities     n · B · h · T² · a   (+ one layer's worth in flight)
    logits, their softmax and gradient     3 · B · T · V · 4   (float32)
    distillation teacher (kd, mix)         P_t + B · T · V · 4  (P_t = its weights' bytes in
                                                             teacher_dtype, plus its logits)

The sum is a lower bound (measured peaks are 1-2x it; tests/test_reliability_train.py). An
evaluation forward (`forward_bytes`) keeps no activations for a backward: the weights, one
layer's activations (B · T · (4·d + 2·m) · a), one layer's attention scores (B · h · T² · a,
except on an Apple GPU, whose fused kernel streams them) and the float32 logits with their
log-softmax (2 · B · T · V · 4); measured CPU peaks are 1.1-1.2x this bound.

A run (or an evaluation) whose bound exceeds the memory available is refused before anything
is written, naming both numbers, instead of crashing in BLAS (or with a segfault). The limit is
the Metal working set on an Apple GPU, else `MemAvailable` (Linux; capped by a cgroup
`memory.max`) or the physical memory.
"""

from __future__ import annotations

import os
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten


def _dims(c: dict) -> tuple[int, int, int, int, int]:
    """(layers n, width d, MLP width m, heads h, vocabulary V) of an mlx-lm config.json."""
    d = int(c.get("hidden_size") or c.get("d_model") or 1)
    return (int(c.get("num_hidden_layers") or c.get("n_layer") or 1), d,
            int(c.get("intermediate_size") or 4 * d), int(c.get("num_attention_heads") or 1),
            int(c.get("vocab_size") or 1))  # fmt: skip


def step_bytes(model_config: dict, param_bytes: int, batch_size: int, seq_len: int, **kw) -> dict:
    """Lower bounds, in bytes, of what one training step holds: {"params", "activations",
    "attention", "logits", "total"}, "teacher" with `teacher_bytes` and "basin_reference" with
    `reference_bytes`. `kw`: `grad_accum` (default 1), `act_bytes` (default 4), `teacher_bytes`
    (a distillation teacher's weights), `reference_bytes` (the basin monitor's float copy).
    """
    n, d, m, h, v = _dims(model_config)
    a = int(kw.get("act_bytes", 4))
    bt = batch_size * seq_len
    out = {
        "params": (4 + (kw.get("grad_accum", 1) > 1)) * param_bytes,
        "activations": n * bt * (8 * d + 3 * m) * a,
        "attention": (n + 1) * batch_size * h * seq_len * seq_len * a,
        "logits": 3 * bt * v * 4,
    }
    if kw.get("teacher_bytes"):
        out["teacher"] = int(kw["teacher_bytes"]) + bt * v * 4
    if kw.get("reference_bytes"):
        out["basin_reference"] = int(kw["reference_bytes"])
    out["total"] = sum(out.values())
    return out


def _cgroup_limit() -> int | None:
    for path, used in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        try:
            limit = Path(path).read_text().strip()
            if limit == "max" or int(limit) >= 1 << 60:
                return None
            return int(limit) - int(Path(used).read_text().strip())
        except (OSError, ValueError):
            continue
    return None


def available_memory() -> tuple[int | None, str]:
    """(bytes a step may use, where that number comes from); (None, why) when unknown."""
    if mx.default_device() == mx.gpu:
        info = mx.device_info()
        for key in ("max_recommended_working_set_size", "memory_size"):
            if info.get(key):
                return int(info[key]), f"the GPU's {key.replace('_', ' ')}"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail, where = int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
                cg = _cgroup_limit()
                if cg is not None and cg < avail:
                    return cg, "the cgroup memory limit (memory.max)"
                return avail, where
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "the physical memory"
    except (ValueError, OSError, AttributeError):
        return None, "unknown"


def forward_bytes(model_config: dict, param_bytes: int, batch_size: int, seq_len: int, **kw):
    """Lower bounds, in bytes, of what one evaluation forward (no gradients) holds: {"params",
    "activations", "attention", "logits", "total"}, with "teacher" for `teacher_bytes` (its
    weights, plus its logits). `kw`: `act_bytes` (default 4), `teacher_bytes`, `attention`
    (count the scores; default: except on an Apple GPU, see the module)."""
    _, d, m, h, v = _dims(model_config)
    a = int(kw.get("act_bytes", 4))
    metal = mx.default_device() == mx.gpu and mx.metal.is_available()
    attention = kw.get("attention", not metal)
    bt = batch_size * seq_len
    out = {
        "params": int(param_bytes),
        "activations": bt * (4 * d + 2 * m) * a,
        "attention": batch_size * h * seq_len * seq_len * a if attention else 0,
        "logits": 2 * bt * v * 4,
    }
    if kw.get("teacher_bytes"):
        out["teacher"] = int(kw["teacher_bytes"]) + bt * v * 4
    out["total"] = sum(out.values())
    return out


def check_forward_memory(
    model_config: dict, param_bytes: int, batch_size: int, seq_len: int, **kw
) -> dict:
    """Raise ValueError when one evaluation forward of `batch_size` x `seq_len` tokens cannot
    fit in the available memory (MLX would fail to allocate, on Linux with a segfault), naming
    the estimate, the limit and the longest --seq-len that fits at this --batch-size. `kw`:
    `forward_bytes`'s. Returns the estimate."""
    est = forward_bytes(model_config, param_bytes, batch_size, seq_len, **kw)
    limit, where = available_memory()
    if limit is None or est["total"] <= limit:
        return est

    def fits(t: int) -> bool:  # a quarter to spare: measured peaks are 1.1-1.2x the bound
        need = forward_bytes(model_config, param_bytes, batch_size, t, **kw)["total"]
        return need <= 0.75 * limit

    lo, hi = 0, seq_len  # the longest t in [0, seq_len) that fits: fits(lo), not fits(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    gib = 1 << 30
    parts = ", ".join(f"{k} {v / gib:.1f}" for k, v in est.items() if k != "total" and v)
    if lo >= 1:
        t = lo // 128 * 128 or lo
        fix = f"--seq-len {t} fits at --batch-size {batch_size}, with a quarter to spare"
        fix += "" if batch_size == 1 else "; a smaller --batch-size allows a longer one"
    else:
        fix = "the weights alone do not fit; evaluate on a machine with more memory"
    raise ValueError(
        f"--seq-len {seq_len}, --batch-size {batch_size}: one evaluation forward needs at least "
        f"{est['total'] / gib:.1f} GiB ({parts} GiB), more than the {limit / gib:.1f} GiB "
        f"available ({where}); {fix}"
    )


def check_model_memory(cfg, model, model_config: dict, **extra) -> dict:
    """`check_step_memory` for `model` as built (activations in its widest floating dtype)."""
    weights = [v for _, v in tree_flatten(model.parameters())]
    floating = [v.dtype.size for v in weights if mx.issubdtype(v.dtype, mx.floating)]
    param_bytes = sum(v.nbytes for v in weights)
    return check_step_memory(cfg, model_config, param_bytes, max(floating, default=4), **extra)


def check_step_memory(
    cfg, model_config: dict, param_bytes: int, act_bytes: int = 4, **extra
) -> dict:
    """Raise ValueError when one step of `cfg` cannot fit in the available memory, naming
    the estimate, the limit and the fix (`extra`: `step_bytes`'s); returns the estimate."""
    est = step_bytes(
        model_config, param_bytes, cfg.batch_size, cfg.seq_len,
        grad_accum=cfg.grad_accum, act_bytes=act_bytes, **extra,
    )  # fmt: skip
    limit, where = available_memory()
    if limit is not None and est["total"] > limit:
        gib = 1 << 30
        parts = ", ".join(f"{k} {v / gib:.1f}" for k, v in est.items() if k != "total")
        raise ValueError(
            f"batch_size={cfg.batch_size}, seq_len={cfg.seq_len}: one training step needs at "
            f"least {est['total'] / gib:.1f} GiB ({parts} GiB), more than the "
            f"{limit / gib:.1f} GiB available ({where}); lower --seq-len or --batch-size (use "
            "--grad-accum for the same tokens per step)"
        )
    return est
