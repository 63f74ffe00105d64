"""QAT of a tiny Llama from scratch in a plain MLX training loop (no mlx_qat trainer).

Shows the whole public-API life cycle: `prepare` a float mlx-lm model with fake quant off,
train in full precision, switch fake quant on (`set_fake_quant` + `init_quantizers`), train
on the quantization grid, then `quantize` to stock MLX quantized modules whose loss equals the
fake-quant model's (train = deploy) and save them with `mx.save_safetensors`. Bytes are the
tokens (vocabulary 256), so no tokenizer is needed.

    python examples/qat_from_scratch.py                       # d2 model, 4 bit, ~1 minute on CPU
    python examples/qat_from_scratch.py --bits 2 --quantizer learned_affine --fp-steps 500
"""

import argparse
import gzip
import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten

import mlx_qat
from mlx_qat import QATConfig, QuantSpec
from mlx_qat.models import model_from_config, preset_config

ROOT = Path(__file__).resolve().parents[1]


def load_bytes(path: Path | None) -> mx.array:
    """The bytes of a text file as token ids (vocabulary 256)."""
    if path is None:  # the first shared corpus file, else the test fixture
        shared = sorted((ROOT.parent / "shared" / "data").glob("*.txt.gz"))
        path = shared[0] if shared else ROOT / "tests/fixtures/corpus/shakespeare.txt.gz"
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    return mx.array(np.frombuffer(raw, dtype=np.uint8).astype(np.int32))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--text", type=Path, default=None, help="a .txt or .txt.gz file")
    p.add_argument("--preset", default="d2", help="model size: d2, d4, ... (mlx_qat.models)")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--quantizer", default="minmax", choices=["minmax", "lsq", "learned_affine"])
    p.add_argument("--fp-steps", type=int, default=200)
    p.add_argument("--qat-steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--out", type=Path, default=Path("runs/qat_from_scratch"))
    args = p.parse_args()

    mx.random.seed(0)
    data = load_bytes(args.text)
    split = int(0.9 * data.size)
    train_data, val_data = data[:split], data[split:]
    n = args.seq_len + 1

    def batch(source: mx.array) -> mx.array:
        starts = mx.random.randint(0, source.size - n, (args.batch_size,))
        return source[starts[:, None] + mx.arange(n)]

    val_batches = [batch(val_data) for _ in range(4)]  # the same batches for every loss below

    config = preset_config(args.preset, vocab_size=256)
    model = model_from_config(config)
    qat = QATConfig(QuantSpec("affine", args.bits, args.group_size), quantizer=args.quantizer)
    mlx_qat.prepare(model, qat, enabled=False)  # QAT layers, fake quant off: the FP phase

    def loss_fn(model, tokens):
        return nn.losses.cross_entropy(model(tokens[:, :-1]), tokens[:, 1:], reduction="mean")

    def val_loss() -> float:
        return sum(loss_fn(model, b).item() for b in val_batches) / len(val_batches)

    loss_and_grad = nn.value_and_grad(model, loss_fn)
    opt = optim.Adam(learning_rate=args.lr)

    def run(steps: int) -> None:
        for _ in range(steps):
            loss, grads = loss_and_grad(model, batch(train_data))
            opt.update(model, grads)
            mx.eval(loss, model.parameters(), opt.state)

    print(f"loss_init: {val_loss():.6f}")
    run(args.fp_steps)
    print(f"loss_fp: {val_loss():.6f}")

    mlx_qat.set_fake_quant(model, True)  # (recompile any mx.compile'd step after this)
    mlx_qat.init_quantizers(model)  # learnable steps/scales from the weights FP training made
    print(f"loss_ptq: {val_loss():.6f}")  # the FP weights rounded to the grid
    run(args.qat_steps)
    loss_qat = val_loss()
    print(f"loss_qat: {loss_qat:.6f}")

    mlx_qat.quantize(model)  # stock nn.QuantizedLinear / QuantizedEmbedding, trained grid
    loss_deployed = val_loss()
    rel_diff = abs(loss_deployed - loss_qat) / loss_qat
    print(f"loss_deployed: {loss_deployed:.6f}")
    print(f"parity_rel_diff: {rel_diff:.3e}")

    args.out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(args.out / "model.safetensors"), dict(tree_flatten(model.parameters())))
    quant = {"group_size": args.group_size, "bits": args.bits, "mode": "affine"}
    (args.out / "config.json").write_text(json.dumps({**config, "quantization": quant}, indent=2))
    print(f"saved: {args.out}")
    if not rel_diff <= 1e-5:  # also catches NaN
        raise SystemExit(f"train != deploy: relative loss difference {rel_diff:.3e} > 1e-5")


if __name__ == "__main__":
    main()
