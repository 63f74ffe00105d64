"""QAT fine-tuning of an existing float mlx-lm model directory with the mlx_qat trainer.

`train(TrainConfig(model=DIR, ...))` loads the model's weights, swaps its layers for fake-quant
ones and trains on the quantization grid (all of it by default: `--qat-fraction 1`), writing a
run directory (config.yaml, metrics.jsonl, checkpoints/, tokenizer/) that
`examples/export_and_generate.py` turns into a quantized model `mlx_lm.load` reads.

The data must be tokenized with the tokenizer the model was trained with: the model
directory's own (Hugging Face) tokenizer. `python -m mlx_qat data --tokenizer MODEL_DIR`
prepares it (raw text given as --data is tokenized with it too), the trainer refuses data of
another tokenizer, and the run (then the export) keeps the model's tokenizer files. A model
directory without tokenizer files cannot be checked: it trains on the data's tokenizer.

    python -m mlx_qat data --input ../shared/data --out data --tokenizer my_float_model
    python examples/qat_mlx_lm_model.py --model my_float_model --data data --out runs/qat
"""

import argparse
import json
from pathlib import Path

from mlx_qat.train import TrainConfig, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True, help="float mlx-lm model dir (config.json + weights)")
    p.add_argument("--data", nargs="+", required=True, help="prepared data dir, or text files")
    p.add_argument("--out", default="runs/qat_mlx_lm_model", help="run directory")
    p.add_argument("--tokens", type=float, default=2e6, help="training tokens")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument(
        "--quantizer", default="learned_affine", choices=["minmax", "lsq", "learned_affine"]
    )
    p.add_argument("--qat-fraction", default="1.0", help="QAT share of the tokens, or 'auto'")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--eval-batches", type=int, default=16, help="validation batches per eval")
    args = p.parse_args()

    config = TrainConfig(
        model=args.model,
        data=args.data,
        out=args.out,
        tokens=int(args.tokens),
        bits=args.bits,
        group_size=args.group_size,
        quantizer=args.quantizer,
        qat_fraction=args.qat_fraction,
        lr=args.lr,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        eval_every=0,  # evaluate at the switch and at the end only
        eval_batches=args.eval_batches,
        final_eval_batches=args.eval_batches,
        quiet=True,
    )
    result = train(config)

    plan, ev = result["plan"], result["eval"]
    train_losses = [
        r["loss"]
        for r in map(json.loads, (Path(args.out) / "metrics.jsonl").read_text().splitlines())
        if r["kind"] == "train"
    ]
    print(f"run_dir: {result['run_dir']}")
    print(f"steps: {result['steps']} (fp {plan['fp_steps']}, qat {plan['qat_steps']})")
    print(f"train_loss_first: {train_losses[0]:.6f}")
    print(f"train_loss_last: {train_losses[-1]:.6f}")
    # Final validation loss of the same model three ways: float weights (fake quant off),
    # round-to-nearest of those float weights (PTQ), and the trained grid (QAT = deployed).
    for name in ("fp", "ptq", "qat"):
        print(f"val_loss_{name}: {ev[name]['loss']:.6f}")
    print(f"tokens_per_s: {result['tokens_per_s']:.0f}")


if __name__ == "__main__":
    main()
