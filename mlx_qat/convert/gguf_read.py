"""Reading a GGUF file: its metadata (the `gguf` package's reader) and its tensors as MLX arrays.

The block formats a llama.cpp file stores its weights in, 32 weights per block, each block with
a float16 scale d (Q4_1 also a float16 minimum m), and the weight each code q stands for:

    Q4_0  w = d·(q − 8)   q ∈ 0..15     18 bytes: d, 16 bytes of nibbles
    Q4_1  w = d·q + m     q ∈ 0..15     20 bytes: d, m, 16 bytes of nibbles
    Q8_0  w = d·q         q ∈ −128..127 34 bytes: d, 32 int8

Each is MLX's affine format at group size 32, w = scale·q′ + bias, without any rounding:
Q4_0 is bits 4, scale d, bias −8d; Q4_1 bits 4, scale d, bias m; Q8_0 bits 8, q′ = q + 128,
scale d, bias −128d (−8d and −128d are d times a power of two: exact in float16). `mx.load`
reads F32, F16 and these three, the quantized ones as such triplets (packed uint32 codes,
float16 scales and biases). `QTensor.dequantize` casts scales and biases to float32 before
`mx.dequantize`, so each weight is scale·q′ + bias in float32: d·q′ is exact (an 11-bit
mantissa times an integer below 2⁸), and the sum then is either exact (Q4_0, Q8_0: d·(q − 8)
and d·q are representable) or rounded once, as ggml's own float32 dequantization rounds
d·q + m. The float32 grid is therefore ggml's, bit for bit (`benchmarks/results/gguf_import.md`
checks every tensor of a real file against `gguf.quants.dequantize`). Dequantizing the float16
triplet directly would return float16 and round the grid (up to 2⁻¹¹ relative).

Every other tensor type is read by the `gguf` package (`GGUFReader`) and dequantized to float32
by its numpy transcription of ggml's block layouts (`gguf.quants.dequantize`): BF16 (which
`mx.load` narrows to float16), Q5_0/Q5_1, the K- and IQ-quants (which `mx.load` refuses). Those
cannot be kept quantized (MLX's affine format does not hold them). A type that neither reads
(I8..I64, F64, Q8_1, Q8_K) is refused by name.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from ..model_source import GGUF_MAGIC as MAGIC
from ..model_source import is_gguf
from .errors import ConvertError

logger = logging.getLogger(__name__)

GROUP_SIZE = 32  # ggml's block size for Q4_0, Q4_1, Q8_0
MLX_QUANTIZED = {"Q4_0": 4, "Q4_1": 4, "Q8_0": 8}  # ggml type -> MLX affine bits (exact)
MLX_TYPES = frozenset({"F32", "F16", *MLX_QUANTIZED})  # what mx.load reads without loss
INSTALL = "pip install 'mlx_qat[gguf]' (the gguf package)"


def is_gguf_input(path: str | Path | None) -> bool:
    """Whether the convert input is a GGUF file: a file named `*.gguf` or starting with `GGUF`."""
    return bool(path) and is_gguf(Path(path).expanduser())


@dataclass
class QTensor:
    """A quantized weight in MLX's affine layout (`mx.quantize`'s packed codes, scales, biases)."""

    weight: mx.array
    scales: mx.array
    biases: mx.array
    bits: int
    group_size: int = GROUP_SIZE

    @property
    def shape(self) -> tuple[int, ...]:
        return (*self.weight.shape[:-1], self.weight.shape[-1] * 32 // self.bits)

    def dequantize(self) -> mx.array:
        """The float32 weights: scale·q + bias in float32 (ggml's grid exactly, see above)."""
        return mx.dequantize(
            self.weight,
            self.scales.astype(mx.float32),
            self.biases.astype(mx.float32),
            group_size=self.group_size,
            bits=self.bits,
        )

    def take_rows(self, index: mx.array) -> QTensor:
        """The rows `index` of every part (rows are output channels; groups run along them)."""
        return QTensor(
            self.weight[index], self.scales[index], self.biases[index], self.bits, self.group_size
        )


Tensor = mx.array | QTensor


@dataclass
class GGUFHeader:
    """A GGUF file's metadata and tensor table (names, ggml type names, shapes row-major)."""

    path: Path
    metadata: dict[str, Any]
    types: dict[str, str]
    shapes: dict[str, tuple[int, ...]]
    reader: Any = field(repr=False, default=None)

    def type_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(self.types.values()).items()))


def read_header(path: str | Path) -> GGUFHeader:
    """Metadata (Python values) and tensor table of a GGUF file; ConvertError if it is not one."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConvertError(f"{path}: no such GGUF file")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != MAGIC:
        raise ConvertError(
            f"{path} is not a GGUF file (it starts with {head!r}, not {MAGIC!r}); give a .gguf "
            "file written by llama.cpp (convert_hf_to_gguf.py / llama-quantize), or a run, "
            "checkpoint or mlx-lm model directory"
        )
    try:
        import gguf
    except ImportError:
        raise ConvertError(f"importing a GGUF file needs the gguf package: {INSTALL}") from None
    try:
        reader = gguf.GGUFReader(str(path))
        metadata = {k: f.contents() for k, f in reader.fields.items()}
    except (ValueError, KeyError, IndexError, OSError) as e:
        raise ConvertError(f"{path}: cannot read it as GGUF ({e}); is the file complete?") from e
    types, shapes = {}, {}
    for t in reader.tensors:
        types[t.name] = t.tensor_type.name
        shapes[t.name] = tuple(int(n) for n in reversed(t.shape.tolist()))
    return GGUFHeader(path, metadata, types, shapes, reader)


def _load_with_mlx(header: GGUFHeader, keep_quantized: bool) -> dict[str, Tensor]:
    try:
        arrays = mx.load(str(header.path))
    except (RuntimeError, ValueError) as e:
        raise ConvertError(f"{header.path}: mx.load cannot read it ({e})") from e
    out: dict[str, Tensor] = {}
    for name, kind in header.types.items():
        base = name.removesuffix(".weight")
        try:
            if kind in MLX_QUANTIZED:
                t: Tensor = QTensor(
                    arrays[name],
                    arrays[f"{base}.scales"],
                    arrays[f"{base}.biases"],
                    MLX_QUANTIZED[kind],
                )
                if not keep_quantized:
                    t = t.dequantize()
            else:
                t = arrays[name]
        except KeyError as e:
            raise ConvertError(
                f"{header.path}: mx.load returned no {e} for the {kind} tensor {name}"
            ) from e
        if tuple(t.shape) != header.shapes[name]:
            raise ConvertError(
                f"{header.path}: tensor {name} read as shape {tuple(t.shape)}, but the file's "
                f"table says {header.shapes[name]}; the file may be damaged"
            )
        out[name] = t
    return out


def _load_with_numpy(header: GGUFHeader) -> dict[str, Tensor]:
    from gguf import quants

    out: dict[str, Tensor] = {}
    for t in header.reader.tensors:
        kind = t.tensor_type.name
        if kind == "F32":
            a = np.asarray(t.data, dtype=np.float32)
        elif kind == "F16":
            a = np.asarray(t.data, dtype=np.float16)  # exact; cast with the rest later
        else:
            try:
                a = quants.dequantize(np.asarray(t.data), t.tensor_type)
            except NotImplementedError:
                raise ConvertError(
                    f"{header.path}: tensor {t.name} is of ggml type {kind}, which neither "
                    "mx.load nor the gguf package can dequantize. Re-quantize the model to Q8_0, "
                    "Q4_0 or Q4_1 (or F16) with llama.cpp's llama-quantize, or convert the "
                    "original Hugging Face model with mlx_lm.convert"
                ) from None
        a = a.reshape(header.shapes[t.name])
        out[t.name] = mx.array(a)
    return out


def load_tensors(header: GGUFHeader, keep_quantized: bool = False) -> dict[str, Tensor]:
    """Every tensor of the file by its GGUF name: float arrays, or `QTensor` for Q4_0/Q4_1/Q8_0
    when `keep_quantized` (refused when any other type sends the file through numpy)."""
    others = sorted({k for k in header.types.values() if k not in MLX_TYPES})
    if not others:
        return _load_with_mlx(header, keep_quantized)
    if keep_quantized:
        names = [n for n, k in header.types.items() if k not in MLX_TYPES][:3]
        raise ConvertError(
            f"{header.path}: {', '.join(names)} ... are {'/'.join(others)}, which MLX's affine "
            "format cannot hold exactly (it holds Q4_0, Q4_1 and Q8_0); import float weights "
            "(drop -q/--quantize) and quantize afterwards"
        )
    logger.info("dequantizing %s tensors with the gguf package (numpy)", "/".join(others))
    return _load_with_numpy(header)
