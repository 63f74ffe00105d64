"""Benchmark: the wall time of one fine-tune step, mlx_qat.train against mlx-lm's DWQ, on the
same model and batches, alternated in one process (the ratio is what is reported).

    python benchmarks/bench_finetune_step.py --work /tmp/bp    # bench_pretrained.py's work dir

DWQ's step is the one `mlx_lm.quant.dwq.dwq_quantize` takes (its loss, `value_and_grad` of the
float32 master scales/biases/norms, Adam; the teacher's logits first), with the student's
quantized layers through dequantize as bench_pretrained runs it. Ours is `Trainer.train_step`
(compiled) of `--train grid` or `kd` training every weight. Steps alternate DWQ, ours, DWQ,
ours, ...; the first pair is a warm-up and is not counted; medians over the rest.

`--components` also alternates, in the same rounds, three pieces of ours, to say where the time
over DWQ goes: `ours_no_fq` (the same compiled step with fake quant off: the float student,
so ours - ours_no_fq is what fake quantization costs), `teacher` (the teacher's forward to
its hidden states alone, evaluated), `transitions` (the step's transition statistics alone,
`train.transitions`: every QAT layer's codes before and after, compiled, on ours' model), and
the two loss heads alone, value and gradient: `kd_head` (ours: `kd_head_per_token` from the
hidden states and the output matrix, chunked) and `dwq_head` (mlx-lm's `kl_div_loss` of the
whole logits, as DWQ takes it).

`--reference` adds `ours_reference`: the same step traced and run with the CPU fast paths off
(`set_kernels_enabled(False)`: every quantizer's pure-MLX reference, the same numbers), so
ours / ours_reference is what `quant/affine_cpu.py` saves in a whole step.

`--separate R` instead runs each side in processes of its own, as a training row does: R
rounds of DWQ's process then ours, each loading its model and taking `--pairs` steps after two
warm-up steps (the first compiles). The alternated rounds above ran DWQ's step slower and ours
faster than their own processes do (`finetune_step_v8_kd.md` against the rows of
`pretrained_smollm2_v2_speed2.md`), so the ratio of a training row is measured this way.

(Re-executes itself with OpenBLAS preloaded, see `mlx_qat.blas`.)
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import header_lines, machine  # noqa: E402
from mlx_qat.blas import reexec_with_openblas  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
BATCH, SEQ = 4, 256  # one step: the rows' batches of bench_pretrained
WARMUP = 2  # `--separate`: steps not counted in each process (the first compiles)


def dwq_step(args, batches):
    """A function running DWQ's step k (mlx-lm's loss and update, as in dwq_quantize)."""
    import copy

    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx.utils import tree_map
    from mlx_lm.tuner.losses import kl_div_loss
    from mlx_lm.utils import load, quantize_model

    from benchmarks.bench_pretrained import _dequantized_forward

    _dequantized_forward()
    model, _, config = load(str(args.work / "float"), return_config=True)
    q = copy.deepcopy(model)
    quantize_model(q, config, group_size=64, bits=args.bits)
    model.freeze()
    q.train()
    for _, m in q.named_modules():
        if hasattr(m, "bits") and m.mode == "affine" and m.bits < 8:
            m.unfreeze(keys=["scales", "biases"], recurse=False)
    params = tree_map(lambda x: x.astype(mx.float32), q.trainable_parameters())
    opt = optim.Adam(learning_rate=1e-4, bias_correction=True)
    scale = 0.5

    def loss_fn(params, x, targets):
        q.update(params)
        return kl_div_loss(scale * q(x), scale * targets).mean()

    def step(k):
        nonlocal params
        x = batches[k][:, :-1]
        targets = model(x)
        mx.eval(targets)
        loss, grads = mx.value_and_grad(loss_fn)(params, x, targets)
        params = opt.apply_gradients(grads, params)
        mx.eval(loss, params)

    return step


def our_step(args, case: str, tag: str = ""):
    from mlx_qat.train.config import TrainConfig
    from mlx_qat.train.trainer import Trainer

    cfg = TrainConfig(
        out=str(args.work / f"step_{case}{tag}"), overwrite=True, model=str(args.work / "float"),
        data=[str(args.work / "data")], qat_fraction=1.0, bits=args.bits, group_size=64,
        embed_bits=args.bits, quantizer="learned_affine", objective="kd", kd_temperature=2.0,
        train="grid" if case == "grid" else "all", tokens=64 * BATCH * SEQ, batch_size=BATCH,
        seq_len=SEQ, eval_every=0, save_every=0, quiet=True,
    )  # fmt: skip
    t = Trainer(cfg)
    t.setup()
    t.switch()  # QAT from the first step: teacher, fake quant on, compiled step

    def step(k):
        t.step = k
        t.train_step()

    return step, t


def component_steps(args, t) -> dict:
    """The `--components` pieces (module docstring), each a function of the batch index."""
    import mlx.core as mx

    from mlx_qat.prepare import set_fake_quant
    from mlx_qat.train.kd import hidden_and_head
    from mlx_qat.train.transitions import Transitions

    plain, t2 = our_step(args, args.case, tag="no_fq")
    set_fake_quant(t2.model, False)
    t2._compile()  # the step captures the flag when traced

    def teacher(k):
        x = t.batches.batch(k)[:, :-1]
        mx.eval(hidden_and_head(t.teacher, x))

    stats = Transitions(t.model)
    state = [t.model.state, stats.state]  # as the trainer's step: the EMAs are updated in place
    codes = mx.compile(lambda: stats.after(stats.before()), inputs=state, outputs=state)

    def transitions(k):
        mx.eval(codes())

    # the loss heads alone, value and gradient in (h, W), the teacher's hidden states standing
    # in for the student's: ours (chunked, closed-form gradient) and DWQ's (mlx-lm's
    # kl_div_loss of the whole logits h·Wᵀ, autodiff); both form the teacher's logits; compiled
    from mlx_lm.tuner.losses import kl_div_loss

    from mlx_qat.train.kd import kd_head_per_token

    x0 = t.batches.batch(0)[:, :-1]
    h, w = hidden_and_head(t.teacher, x0)
    ht = h + 0.01
    mx.eval(h, w, ht)

    def dwq_loss(h, w, ht):
        teacher_logits = mx.stop_gradient(ht @ w.T)
        return kl_div_loss(0.5 * (h @ w.T), 0.5 * teacher_logits).mean()

    ours_grad = mx.compile(
        mx.grad(lambda h, w, ht: kd_head_per_token(h, w, ht, w, 2.0).mean(), (0, 1))
    )
    dwq_grad = mx.compile(mx.grad(dwq_loss, (0, 1)))

    def kd_head(k):
        mx.eval(ours_grad(h, w, ht))

    def dwq_head(k):
        mx.eval(dwq_grad(h, w, ht))

    return {"ours_no_fq": plain, "teacher": teacher, "transitions": transitions,
            "kd_head": kd_head, "dwq_head": dwq_head}  # fmt: skip


def reference_step(args):
    """Ours with the CPU fast paths off while it is traced and run (`--reference`)."""
    from mlx_qat.quant import backend

    step, _ = our_step(args, args.case, tag="reference")

    def run(k):
        backend.set_kernels_enabled(False)
        try:
            step(k)
        finally:
            backend.set_kernels_enabled(True)

    return run


def main() -> None:
    reexec_with_openblas()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/mlx_qat_bench_pretrained"))
    p.add_argument("--case", default="kd", choices=("kd", "grid"))
    p.add_argument("--bits", type=int, default=3)
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--name", default="finetune_step")
    p.add_argument("--components", action="store_true", help="time pieces of ours too")
    p.add_argument("--reference", action="store_true", help="time ours on the reference path too")
    p.add_argument(
        "--separate",
        type=int,
        default=0,
        metavar="R",
        help="R rounds of one process per side instead of alternating in one",
    )
    p.add_argument("--child", choices=("dwq", "ours"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child_steps(args)
    if args.separate and (args.components or args.reference):
        p.error("--separate times the two steps only: drop --components and --reference")
    if args.separate:
        return write(
            args,
            separate_times(args),
            f"{args.separate} round{'s' * (args.separate > 1)} of one process per side, "
            f"{args.pairs} steps each after {WARMUP} warm-up steps",
        )
    import mlx.core as mx

    mx.set_cache_limit(4 << 30)
    ours, t = our_step(args, args.case)
    batches = [t.batches.batch(k) for k in range(args.pairs + 1)]
    steps = {"dwq": dwq_step(args, batches), "ours": ours}
    if args.components:
        steps.update(component_steps(args, t))
    if args.reference:
        steps["ours_reference"] = reference_step(args)
    times = {name: [] for name in steps}
    for k in range(args.pairs + 1):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            fn(k)
            if k:  # the first pair compiles and warms up
                times[name].append(time.perf_counter() - t0)
    write(args, times, f"{args.pairs} alternated rounds, after one warm-up round")


def child_steps(args) -> None:
    """One side's steps in this process (`--separate`): their times as a json line."""
    import mlx.core as mx

    from mlx_qat.data.batches import TokenBatches
    from mlx_qat.data.shards import load_bundle

    mx.set_cache_limit(4 << 30)  # as bench_pretrained's processes and the trainer's default
    n = args.pairs + WARMUP
    if args.child == "dwq":  # the trainer's batches (its seed 0), without building a trainer
        stream = TokenBatches(load_bundle(args.work / "data").train, BATCH, SEQ, seed=0)
        step = dwq_step(args, [stream.batch(k) for k in range(n)])
    else:
        step, _ = our_step(args, args.case)
    times = []
    for k in range(n):
        t0 = time.perf_counter()
        step(k)
        times.append(time.perf_counter() - t0)
    print(json.dumps({"times": times[WARMUP:]}))


def separate_times(args) -> dict:
    """{side: step times} from `--separate` rounds of one process per side, DWQ first."""
    import subprocess

    times = {"dwq": [], "ours": []}
    for _ in range(args.separate):
        for side in times:
            out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child", side],
                                 check=True, capture_output=True, text=True).stdout  # fmt: skip
            times[side] += json.loads(out.strip().splitlines()[-1])["times"]
    return times


def write(args, times: dict, how: str) -> None:
    """The report: medians of `times` ({step: seconds}), ours / DWQ, md and json."""
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["ours"] / med["dwq"]
    cmd = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    name = f"{args.name}_{args.case}"
    lines = [f"# One fine-tune step of SmolLM2-135M at {args.bits} bits: mlx_qat.train "
             f"({args.case}) vs mlx-lm's DWQ", ""]  # fmt: skip
    lines += header_lines(cmd, date, machine())
    lines += ["", "| step | median s (4 x 256 tokens) | all |", "|---|---|---|"]
    for k, v in times.items():
        lines.append(f"| {k} | {med[k]:.2f} | {', '.join(f'{x:.2f}' for x in v)} |")
    lines += ["", f"ours / DWQ: **{ratio:.2f}** (median over {how})."]
    lines += [f"{k} / DWQ: {med[k] / med['dwq']:.2f}" for k in times if k not in ("dwq", "ours")]
    if args.reference:
        lines.append(f"ours / ours_reference: **{med['ours'] / med['ours_reference']:.2f}**")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(
        json.dumps(
            {"command": cmd, "date": date, "machine": machine(), "times": times, "ratio": ratio},
            indent=2,
        )
        + "\n"  # fmt: skip
    )
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
