"""Export a QAT run as a quantized MLX model, then load and generate with stock mlx-lm.

`convert(run_dir, mlx_path)` packs exactly the grid the run trained (no re-quantization),
writes an mlx-lm model directory (config.json with its "quantization" block, safetensors,
tokenizer files) and checks train = deploy: the validation loss of the fake-quant model and
of the written directory loaded back by `mlx_lm.load` must agree. The exported model then
needs nothing from mlx_qat: `mlx_lm.load` + `mlx_lm.generate`.

    python examples/export_and_generate.py runs/qat_mlx_lm_model --prompt "To be"
"""

import argparse
from pathlib import Path

import mlx_lm

from mlx_qat.convert import convert


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run", type=Path, help="run directory (or one of its checkpoints)")
    p.add_argument("--mlx-path", type=Path, default=None, help="output (default: RUN/mlx_model)")
    p.add_argument("--prompt", default="To be, or not to be")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--parity-batches", type=int, default=None, help="validation batches")
    p.add_argument("--force", action="store_true", help="replace an existing --mlx-path")
    args = p.parse_args()

    mlx_path = args.mlx_path or args.run / "mlx_model"
    result = convert(args.run, mlx_path, force=args.force, parity_batches=args.parity_batches)
    print(f"mlx_path: {result.mlx_path}")
    print(f"quantization: {result.quantization}")
    print(f"bits_per_weight: {result.bits_per_weight:.3f}")
    print(f"size_bytes: {result.total_bytes}")
    if result.parity is None:  # no validation data found for the run
        print(f"parity_skipped: {result.parity_skipped}")
    else:  # convert raised ParityError if this were above the tolerance
        par = result.parity
        print(f"loss_fake_quant: {par['reference']:.6f}")
        print(f"loss_exported: {par['exported']:.6f}")
        print(f"parity_rel_diff: {par['rel_diff']:.3e} (tolerance {par['tolerance']:.0e})")

    model, tokenizer = mlx_lm.load(str(mlx_path))  # plain mlx-lm from here on
    text = mlx_lm.generate(model, tokenizer, args.prompt, max_tokens=args.max_tokens)
    print(f"generated_tokens: {len(tokenizer.encode(text))}")
    print("--- generated (greedy) ---")
    print(args.prompt + text)


if __name__ == "__main__":
    main()
