"""Syntax check of the exact Metal/CUDA sources in the shape MLX compiles them, without a GPU.

`flavour_source(backend)` wraps the header and body strings that mlx_qat/kernels/gpu.py hands
to MLX in a translation unit shaped like the one MLX generates (Metal: a templated `[[kernel]]`
function with concretely typed buffers and the `thread_position_in_grid` attribute argument;
CUDA: a `__global__` function in `mlx::core::cu` with `using T = ...; constexpr int ...;`
before the body), preceded by the builtins of cpp.py (METAL_BUILTINS / CUDA_BUILTINS: address
spaces, `metal::rint`, `as_type`, `simd_shuffle_xor`, `__fdiv_rn`, `__shfl_xor_sync`,
`blockIdx`, `__half`, ...). The numbers of those same strings are tested by cpp.py's "metal"
and "cuda" builds; `g++ -fsyntax-only` here adds MLX's wrapping: buffer types, constexpr
template values, the CUDA type names. It does not prove the Metal/CUDA compilers accept it:
only a Mac/NVIDIA run does (tests marked `metal`/`cuda`).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from mlx_qat.kernels import sources

from .cpp import BASE, CUDA_BUILTINS, METAL_BUILTINS
from .simd_emulation import SIMD_CORE

METAL_STUB = BASE + SIMD_CORE + METAL_BUILTINS
CUDA_STUB = BASE + SIMD_CORE + CUDA_BUILTINS

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
