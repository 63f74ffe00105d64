"""The short `README.md` model cards written next to an exported or imported model.

The YAML header carries mlx-lm's fields (`mlx_lm.utils.create_model_card`: library_name,
pipeline_tag, the "mlx" tag); that function itself does not fit: mlx-lm 0.28 requires the
source's Hub card, and it leaves the body empty, where ours reports provenance and the check.
"""

from __future__ import annotations

import datetime
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

METHODS = {
    "qat": "QAT: the packed codes, scales and biases are the trained fake-quant grid",
    "ptq": "PTQ: round-to-nearest (min/max) quantization of the float weights",
    "dequantize": "float weights (dequantized)",
}


def _version(pkg: str) -> str:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return "?"


def _format(block: dict | None) -> list[str]:
    if not block:
        return ["- Format: float (not quantized)"]
    glob = {k: block[k] for k in ("group_size", "bits", "mode") if k in block}
    lines = [
        f"- Format: {glob.get('mode', 'affine')}, {glob['bits']} bits, group size "
        f"{glob['group_size']} (mlx-lm `quantization` block in config.json)"
    ]
    for path, spec in sorted((k, v) for k, v in block.items() if k not in glob):
        what = (
            "float"
            if spec is False
            else f"{spec.get('mode', 'affine')} {spec['bits']}-bit g{spec['group_size']}"
        )
        lines.append(f"  - `{path}`: {what}")
    return lines


def _fmt(x: float | None, digits: int = 6) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _header(*tags: str) -> list[str]:
    tag_lines = [f"- {t}" for t in ("mlx", "mlx_qat", *tags)]
    return ["---", "library_name: mlx", "pipeline_tag: text-generation", "tags:", *tag_lines, "---"]


def _usage(mlx_path) -> list[str]:
    return [
        "```python",
        "from mlx_lm import load, generate",
        "",
        f'model, tokenizer = load("{mlx_path}")',
        'print(generate(model, tokenizer, prompt="Hello", max_tokens=50))',
        "```",
        "",
    ]


def summary_lines(r) -> list[str]:
    """The output, format, bits-per-weight and size lines printed for an export or an import."""
    fmt = "float"
    if r.quantization:
        q = r.quantization
        fmt = f"{q.get('mode', 'affine')} {q['bits']}-bit g{q['group_size']}"
        n_over = len([k for k in q if k not in ("group_size", "bits", "mode")])
        fmt += f" (+{n_over} per-layer entries)" if n_over else ""
    return [
        f"  output           {r.mlx_path}",
        f"  format           {fmt}, {r.dtype}",
        f"  bits per weight  {r.bits_per_weight:.3f}",
        f"  size             {r.total_bytes / 1e6:.2f} MB in {len(r.files)} file(s), "
        f"{r.num_parameters:,} parameters",
    ]


def model_card(result) -> str:
    """Markdown for a `ConvertResult`: provenance, format, size and the parity losses."""
    name = result.mlx_path.rstrip("/").rsplit("/", 1)[-1]
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    step = f", step {result.step}" if result.step is not None else ""
    lines = [
        *_header(),
        "",
        f"# {name}",
        "",
        f"Exported by `mlx_qat.convert` {_version('mlx_qat')} (mlx {_version('mlx')}, "
        f"mlx-lm {_version('mlx-lm')}) on {date}.",
        "",
        f"- Source: `{result.source}` ({result.source_kind}{step})",
        f"- Method: {METHODS.get(result.method, result.method)}",
        *_format(result.quantization),
        f"- Float parameters and scales: {result.dtype}",
        f"- Bits per weight: {result.bits_per_weight:.3f} (mlx-lm's measure: stored bits / "
        "weights, scales and biases included)",
        f"- Size: {result.total_bytes:,} bytes of weights in {len(result.files)} file(s), "
        f"{result.num_parameters:,} parameters",
        "",
        "## Train = deploy check",
        "",
    ]
    p = result.parity
    if p is None:
        lines.append(f"Not checked: {result.parity_skipped}.")
    else:
        verdict = "passed" if p["passed"] else "FAILED"
        lines += [
            f"Validation loss (nats/token) on {p['num_tokens']:,} tokens in {p['num_batches']} "
            f"batches of {p['data']}:",
            "",
            "| model | loss |",
            "|---|---|",
            f"| float (fake quant off) | {_fmt(p['fp'])} |",
            f"| PTQ: round-to-nearest of the float weights | {_fmt(p.get('ptq'))} |",
            f"| before export ({'fake quant' if result.method != 'dequantize' else 'source'}) "
            f"| {_fmt(p['reference'])} |",
            f"| exported, loaded by `mlx_lm.load` | {_fmt(p['exported'])} |",
            "",
            f"Relative difference {p['rel_diff']:.2e} (tolerance {p['tolerance']:.0e}): {verdict}.",
        ]
        if p.get("bits_per_byte") is not None:
            lines.append(f"Exported model: {p['bits_per_byte']:.4f} bits per byte.")
    lines += ["", "## Use with mlx", "", *_usage(result.mlx_path)]
    return "\n".join(lines)


def gguf_card(r) -> str:
    """Markdown for a `GGUFImportResult`: the GGUF source, format, size and the checks."""
    name = Path(r.mlx_path).name
    fmt = (
        "float weights: every tensor dequantized (ggml's grid, exact in float32)"
        if r.method == "float"
        else "Q4_0/Q4_1/Q8_0 kept quantized as MLX affine, group size 32 (exact); "
        f"quantization block: `{json.dumps(r.quantization)}`"
    )
    lines = [
        *_header("gguf"),
        "",
        f"# {name}",
        "",
        f"Imported by `mlx_qat.convert` from the GGUF file `{Path(r.source).name}`"
        + (f" ({r.name})" if r.name else "")
        + f", sha256 `{r.source_sha256}`.",
        "",
        f"- GGUF tensors: {', '.join(f'{n} {t}' for t, n in r.tensor_types.items())}",
        f"- Format: {fmt}",
        f"- Float parameters: {r.dtype}",
        f"- Bits per weight: {r.bits_per_weight:.3f}",
        f"- Size: {r.total_bytes:,} bytes, {r.num_parameters:,} parameters",
        "",
    ]
    if r.check_loss is not None:
        c = r.check_loss
        lines += [
            f"Loss {c['loss']:.4f} nats/token on a {c['tokens']}-token English sentence "
            f"(float32 forward; chance: {c['chance']:.2f}).",
            "",
        ]
    if r.check is not None:
        lines += [
            "Checked: the directory loaded by mlx-lm's loader is the model built from the GGUF "
            f"tensors, {r.check['parameters']} parameter tensors bit for bit.",
            "",
        ]
    return "\n".join(lines + _usage(r.mlx_path))
