"""The short `README.md` model card written next to an exported model."""

from __future__ import annotations

import datetime
from importlib.metadata import PackageNotFoundError, version

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
    per_path = {k: v for k, v in block.items() if k not in glob}
    for path, spec in sorted(per_path.items()):
        what = (
            "float"
            if spec is False
            else f"{spec.get('mode', 'affine')} {spec['bits']}-bit g{spec['group_size']}"
        )
        lines.append(f"  - `{path}`: {what}")
    return lines


def _fmt(x: float | None, digits: int = 6) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def model_card(result) -> str:
    """Markdown for a `ConvertResult`: provenance, format, size and the parity losses."""
    name = result.mlx_path.rstrip("/").rsplit("/", 1)[-1]
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    step = f", step {result.step}" if result.step is not None else ""
    lines = [
        "---",
        "library_name: mlx",
        "pipeline_tag: text-generation",
        "tags:",
        "- mlx",
        "- mlx_qat",
        "---",
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
    lines += [
        "",
        "## Use with mlx",
        "",
        "```python",
        "from mlx_lm import load, generate",
        "",
        f'model, tokenizer = load("{result.mlx_path}")',
        'print(generate(model, tokenizer, prompt="Hello", max_tokens=50))',
        "```",
        "",
    ]
    return "\n".join(lines)
