"""Syntax check of the exact Metal/CUDA sources without Metal or CUDA.

`flavour_source(backend)` wraps the header and body strings that mlx_qat/kernels/gpu.py hands
to MLX in a translation unit shaped like the one MLX generates (Metal: a templated `[[kernel]]`
function with concretely typed buffers and the `thread_position_in_grid` attribute argument;
CUDA: a `__global__` function in `mlx::core::cu` with `using T = ...; constexpr int ...;`
before the body), preceded by a small stub of the backend's builtins (address spaces,
`metal::rint`, `as_type`, `simd_shuffle_xor`, `__fdiv_rn`, `__shfl_xor_sync`, `blockIdx`,
`__half`, ...). `g++ -fsyntax-only` on it catches typos and type errors in the
backend-specific macro layer, which the C++ harness (which uses its own prelude) cannot. It
does not prove the Metal/CUDA compilers accept it: only a Mac/NVIDIA run does (tests marked
`metal`/`cuda`).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from mlx_qat.kernels import sources

_TYPES = r"""
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
typedef _Float16 qat_half_stub;
struct qat_bf16_stub {
  uint16_t bits;
  qat_bf16_stub() : bits(0) {}
  qat_bf16_stub(float f) { uint32_t u; std::memcpy(&u, &f, 4); bits = (uint16_t)(u >> 16); }
  operator float() const { uint32_t u = (uint32_t)bits << 16; float f; std::memcpy(&f, &u, 4); return f; }
};
"""

METAL_STUB = (
    _TYPES
    + r"""
#define device
#define constant
#define thread
typedef unsigned int uint;
typedef unsigned short ushort;
struct uint3 { uint x, y, z; };
typedef qat_half_stub float16_t;
typedef qat_bf16_stub bfloat16_t;
template <typename To, typename From> To as_type(From f) { To t; std::memcpy(&t, &f, sizeof(t)); return t; }
inline float simd_shuffle_xor(float data, ushort mask) { return data; }
namespace metal {
inline float rint(float x) { return std::rint(x); }
inline float fabs(float x) { return std::fabs(x); }
inline float ldexp(float x, int e) { return std::ldexp(x, e); }
}
"""
)

CUDA_STUB = (
    _TYPES
    + r"""
#define __device__
#define __forceinline__ inline
#define __global__
struct qat_dim3 { unsigned int x, y, z; };
static qat_dim3 blockIdx, blockDim, threadIdx;
typedef qat_half_stub __half;
typedef qat_bf16_stub __nv_bfloat16;
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline unsigned int __float_as_uint(float f) { unsigned int u; std::memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned int u) { float f; std::memcpy(&f, &u, 4); return f; }
inline float __shfl_xor_sync(unsigned int mask, float var, int lane_mask, int width = 32) { return var; }
"""
)

_METAL_TYPES = {"f32": "float", "f16": "float16_t", "bf16": "bfloat16_t"}
_CUDA_TYPES = {"f32": "float", "f16": "__half", "bf16": "__nv_bfloat16"}


def _variants(job: str) -> list[tuple[dict, tuple]]:
    """(template values, buffer dtypes) per instantiation; buffer dtypes follow IO order."""
    out = []
    for t in ("f32", "f16", "bf16"):
        for u in ("f32", "bf16"):
            if job == "forward":
                tmpl = {"T": t, "D": u, "BITS": 4, "GS": 64, "KIND": 2}
                out.append((tmpl, (t, "f32", "f32", "i32", t)))
            elif job == "backward":
                tmpl = {"T": t, "C": u, "BITS": 4, "GS": 64, "KIND": 1}
                out.append((tmpl, (t, u, "f32", "f32", "i32", u, "f32")))
            elif u == "f32":
                out.append(({"T": t, "GS": 32, "KIND": 5}, (t, "i32", t)))
    return out


def _metal_kernel(job: str, i: int, tmpl: dict, dtypes: tuple) -> str:
    ins, outs = sources.IO[job]
    names = (*ins, *outs)
    params = []
    for k, (name, dt) in enumerate(zip(names, dtypes)):
        ctype = "int" if dt == "i32" else _METAL_TYPES[dt]
        space = "device" if name in outs else "const device"
        params.append(f"  {space} {ctype}* {name} [[buffer({k})]]")
    params.append("  uint3 thread_position_in_grid [[thread_position_in_grid]]")
    targs = ", ".join(("typename " if isinstance(v, str) else "int ") + k for k, v in tmpl.items())
    vals = ", ".join(_METAL_TYPES[v] if isinstance(v, str) else str(v) for v in tmpl.values())
    _, body = sources.metal_source(job)
    name = f"k_{job}_{i}"
    return (
        f"template <{targs}>\n[[kernel]] void {name}(\n" + ",\n".join(params) + ") {\n"
        f"{body}\n}}\ntemplate void {name}<{vals}>("
        + ", ".join(p.split("[[")[0].rsplit(" ", 2)[0].strip() for p in params)
        + ");\n"
    )


def _cuda_kernel(job: str, i: int, tmpl: dict, dtypes: tuple) -> str:
    ins, outs = sources.IO[job]
    params = []
    for name, dt in zip((*ins, *outs), dtypes):
        ctype = "int" if dt == "i32" else _CUDA_TYPES[dt]
        params.append(f"    {'' if name in outs else 'const '}{ctype}* {name}")
    consts = "".join(
        f"  using {k} = {_CUDA_TYPES[v]};\n"
        if isinstance(v, str)
        else f"  constexpr int {k} = {v};\n"
        for k, v in tmpl.items()
    )
    _, body = sources.cuda_source(job)
    return (
        f"namespace mlx::core::cu {{\n__global__ void k_{job}_{i}(\n"
        + ",\n".join(params)
        + f") {{\n{consts}{body}\n}}\n}}\n"
    )


def flavour_source(backend: str) -> str:
    """One translation unit with every job's kernel, as `backend` ("metal"/"cuda") gets it."""
    if backend == "metal":
        stub, header, make = METAL_STUB, sources.metal_source("forward")[0], _metal_kernel
    elif backend == "cuda":
        stub, header, make = CUDA_STUB, sources.cuda_source("forward")[0], _cuda_kernel
    else:
        raise ValueError(f"flavour_source: unknown backend {backend!r}")
    parts = [stub, header]
    for job in sources.IO:
        for i, (tmpl, dtypes) in enumerate(_variants(job)):
            parts.append(make(job, i, tmpl, dtypes))
    return "\n".join(parts)


def syntax_check(backend: str, compiler: str, directory: str | Path) -> str:
    """Run `compiler -fsyntax-only` on `flavour_source(backend)`; returns "" or the errors."""
    src = Path(directory) / f"flavour_{backend}.cpp"
    src.write_text(flavour_source(backend))
    cmd = [compiler, "-std=c++17", "-fsyntax-only", "-Wno-attributes", "-Wno-unknown-pragmas"]
    r = subprocess.run([*cmd, str(src)], capture_output=True, text=True, timeout=300, check=False)
    return "" if r.returncode == 0 else r.stderr[-4000:]
