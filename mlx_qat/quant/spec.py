"""`QuantSpec`: one of MLX's native quantized formats.

A spec names what `mx.quantize(w, group_size, bits, mode=mode)` would produce: groups of
`group_size` consecutive elements along the last axis share one scale (and, for affine, one
bias). The valid combinations are MLX's own:

    affine  bits 2, 3, 4, 5, 6, 8   group 32, 64, 128   scale + bias in the model dtype
    mxfp4   bits 4                  group 32            e8m0 scale (uint8), FP4 e2m1 elements
    nvfp4   bits 4                  group 16            e4m3 scale (uint8), FP4 e2m1 elements
    mxfp8   bits 8                  group 32            e8m0 scale (uint8), FP8 e4m3 elements

Storage cost per weight (`bits_per_weight`) counts the element bits plus the per-group scale
(and bias), the figure mlx-lm reports: affine `bits + 2·16/group_size` for 16-bit scales,
fp modes `bits + 8/group_size`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

AFFINE_BITS = (2, 3, 4, 5, 6, 8)
AFFINE_GROUP_SIZES = (32, 64, 128)
# mode -> (bits, group_size): the fp formats have exactly one valid combination each.
FP_MODES = {"mxfp4": (4, 32), "nvfp4": (4, 16), "mxfp8": (8, 32)}
MODES = ("affine", *FP_MODES)


@dataclass(frozen=True)
class QuantSpec:
    """One MLX native quantization format (valid combinations in the module header).

    Example:
        >>> QuantSpec("affine", bits=4, group_size=64).bits_per_weight()
        4.5
    """

    mode: str = "affine"
    bits: int = 4
    group_size: int = 64

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(
                f"QuantSpec(mode={self.mode!r}): unknown mode; choose one of {', '.join(MODES)}"
            )
        if self.mode == "affine":
            if self.bits not in AFFINE_BITS:
                raise ValueError(
                    f"QuantSpec(bits={self.bits}): affine supports bits "
                    f"{', '.join(map(str, AFFINE_BITS))}"
                )
            if self.group_size not in AFFINE_GROUP_SIZES:
                raise ValueError(
                    f"QuantSpec(group_size={self.group_size}): affine supports group sizes "
                    f"{', '.join(map(str, AFFINE_GROUP_SIZES))}"
                )
        else:
            bits, gs = FP_MODES[self.mode]
            if (self.bits, self.group_size) != (bits, gs):
                raise ValueError(
                    f"QuantSpec(mode={self.mode!r}, bits={self.bits}, group_size="
                    f"{self.group_size}): {self.mode} requires bits={bits}, group_size={gs}"
                )

    @classmethod
    def for_mode(cls, mode: str, bits: int | None = None, group_size: int | None = None):
        """Build a spec, filling the fp modes' fixed bits/group size (and affine defaults)."""
        if mode in FP_MODES:
            b, g = FP_MODES[mode]
            return cls(mode, b if bits is None else bits, g if group_size is None else group_size)
        return cls(mode, 4 if bits is None else bits, 64 if group_size is None else group_size)

    @property
    def is_affine(self) -> bool:
        return self.mode == "affine"

    def bits_per_weight(self, scale_bits: int = 16) -> float:
        """Stored bits per weight including scales (and biases), as mlx-lm reports them;
        `scale_bits` is an affine scale/bias's width (the fp modes' scales are 8 bit)."""
        if self.is_affine:
            return self.bits + 2 * scale_bits / self.group_size
        return self.bits + 8 / self.group_size

    def check_shape(self, shape: tuple[int, ...], name: str = "weight") -> None:
        """Raise ValueError unless a tensor of `shape` can be quantized with this spec."""
        if len(shape) < 2:
            raise ValueError(
                f"{name} of shape {tuple(shape)}: quantization needs at least 2 dimensions"
            )
        if shape[-1] % self.group_size:
            raise ValueError(
                f"{name} of shape {tuple(shape)}: last dimension {shape[-1]} is not a multiple "
                f"of group_size={self.group_size}; use a group size that divides it "
                f"({self._dividing_sizes(shape[-1])}) or leave this layer unquantized"
            )

    def _dividing_sizes(self, n: int) -> str:
        sizes = AFFINE_GROUP_SIZES if self.is_affine else (self.group_size,)
        ok = [str(g) for g in sizes if n % g == 0]
        return "valid here: " + ", ".join(ok) if ok else "none of this mode's sizes divides it"

    def to_mlx(self) -> dict:
        """The `"quantization"` entry mlx-lm writes to config.json for this format."""
        return {"group_size": self.group_size, "bits": self.bits, "mode": self.mode}

    asdict = asdict  # plain data (dataclasses.asdict)

    def __str__(self) -> str:
        if self.is_affine:
            return f"affine{self.bits}g{self.group_size}"
        return self.mode
