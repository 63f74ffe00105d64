"""Plain-C++ build of the kernel bodies, so that they are tested on machines without a GPU.

The SAME body strings that `mlx_qat/kernels/gpu.py` hands to Metal/CUDA are pasted into C++ template functions
after a prelude that maps the few backend words onto C++: QAT_FN, the math macros, `float16_t`
(`_Float16`, g++ ≥ 12) and `bfloat16_t` (a struct converting with round-to-nearest-even and
MLX's NaN, 0x7FC0). BITS, GS and KIND become runtime arguments (the bodies only use them as
values), T/D/C stay template parameters. `main` emulates a launch: it runs the body for every
thread index of the grid, including the surplus threads a CUDA launch would start.

SIMD groups: `qat_launch` (simd_emulation.py) runs the threads 32 at a time as one SIMD group
and emulates QAT_SHFL_XOR in lockstep by replay, failing on divergence or on a shuffle with a
lane the launch did not start.

Command line (all arrays raw little-endian files, dtype codes f32/f16/bf16):
    harness fwd T D BITS GS KIND n_groups n_threads w p0 p1 out
    harness bwd T C BITS GS KIND n_groups n_threads w cot p0 p1 dw red
    harness fpf T - - GS KIND n_groups n_threads w out
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import mlx.core as mx
import numpy as np

from mlx_qat.kernels import sources
from mlx_qat.kernels.launch import launch_geometry

from .simd_emulation import SIMD_EMULATION

PRELUDE = r"""
#include <cmath>
#include <csetjmp>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#define QAT_FN static inline
#define QAT_RINT(x) std::rint(x)
#define QAT_FABS(x) std::fabs(x)
#define QAT_DIV(a, b) ((a) / (b))
#define QAT_MUL(a, b) ((a) * (b))
#define QAT_ADD(a, b) ((a) + (b))
#define QAT_SUB(a, b) ((a) - (b))
#define QAT_F2U(x) qat_f2u(x)
#define QAT_U2F(x) qat_u2f(x)
#define QAT_LDEXP(x, e) std::ldexp((float)(x), (e))

static inline unsigned int qat_f2u(float f) { unsigned int u; std::memcpy(&u, &f, 4); return u; }
static inline float qat_u2f(unsigned int u) { float f; std::memcpy(&f, &u, 4); return f; }

typedef _Float16 float16_t;

struct bfloat16_t {
  uint16_t bits;
  bfloat16_t() : bits(0) {}
  bfloat16_t(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if (std::isnan(f)) {
      bits = 0x7FC0;
    } else {
      bits = (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
    }
  }
  operator float() const {
    uint32_t u = (uint32_t)bits << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};
"""

DRIVER = r"""
template <typename X>
static std::vector<X> load(const char* path, size_t n) {
  std::vector<X> v(n);
  FILE* f = std::fopen(path, "rb");
  if (!f || std::fread(v.data(), sizeof(X), n, f) != n) { std::fprintf(stderr, "read %s\n", path); std::exit(2); }
  std::fclose(f);
  return v;
}

template <typename X>
static void save(const char* path, const std::vector<X>& v) {
  FILE* f = std::fopen(path, "wb");
  if (!f || std::fwrite(v.data(), sizeof(X), v.size(), f) != v.size()) { std::exit(3); }
  std::fclose(f);
}

// Outputs get room for every launched thread, filled with a sentinel: a surplus thread that
// writes anything (a missing bounds check) is caught by check_tail.
template <typename X>
static std::vector<X> guarded(size_t ng, size_t nt, size_t per) {
  return std::vector<X>((ng > nt ? ng : nt) * per, X(-12345.0f));
}

template <typename X>
static void check_tail(const std::vector<X>& v, const std::vector<X>& fresh, size_t n) {
  if (std::memcmp(v.data() + n, fresh.data() + n, (v.size() - n) * sizeof(X)) != 0) {
    std::fprintf(stderr, "a thread beyond the last group wrote output\n");
    std::exit(5);
  }
}

template <typename T, typename D>
static void run_fwd(int bits, int gs, int kind, size_t ng, size_t nt, char** a) {
  size_t np = kind == 0 ? 1 : ng;
  auto w = load<T>(a[0], ng * gs);
  auto p0 = load<float>(a[1], np);
  auto p1 = load<float>(a[2], np);
  std::vector<int> meta(1, (int)ng);
  std::vector<T> out(guarded<T>(ng, nt, gs));
  const std::vector<T> fresh = out;
  qat_launch(nt, [&](unsigned int t) {
    qat_forward<T, D>(w.data(), p0.data(), p1.data(), meta.data(), out.data(), bits, gs, kind, t);
  });
  check_tail(out, fresh, ng * gs);
  out.resize(ng * gs);
  save(a[3], out);
}

template <typename T, typename C>
static void run_bwd(int bits, int gs, int kind, size_t ng, size_t nt, char** a) {
  auto w = load<T>(a[0], ng * gs);
  auto cot = load<C>(a[1], ng * gs);
  auto p0 = load<float>(a[2], ng);
  auto p1 = load<float>(a[3], ng);
  std::vector<int> meta(1, (int)ng);
  std::vector<C> dw(guarded<C>(ng, nt, gs));
  std::vector<float> red(guarded<float>(ng, nt, 2));
  const std::vector<C> fresh_dw = dw;
  const std::vector<float> fresh_red = red;
  qat_launch(nt, [&](unsigned int t) {
    qat_backward<T, C>(w.data(), cot.data(), p0.data(), p1.data(), meta.data(), dw.data(), red.data(), bits, gs, kind, t);
  });
  check_tail(dw, fresh_dw, ng * gs);
  check_tail(red, fresh_red, ng * 2);
  dw.resize(ng * gs);
  red.resize(ng * 2);
  save(a[4], dw);
  save(a[5], red);
}

template <typename T>
static void run_fp(int gs, int kind, size_t ng, size_t nt, char** a) {
  auto w = load<T>(a[0], ng * gs);
  std::vector<int> meta(1, (int)ng);
  std::vector<T> out(guarded<T>(ng, nt, gs));
  const std::vector<T> fresh = out;
  qat_launch(nt, [&](unsigned int t) { qat_fp_forward<T>(w.data(), meta.data(), out.data(), gs, kind, t); });
  check_tail(out, fresh, ng * gs);
  out.resize(ng * gs);
  save(a[1], out);
}

template <template <typename, typename> class R, typename T>
static int second(const std::string& u, int b, int g, int k, size_t ng, size_t nt, char** a) {
  if (u == "f32") R<T, float>::go(b, g, k, ng, nt, a);
  else if (u == "f16") R<T, float16_t>::go(b, g, k, ng, nt, a);
  else if (u == "bf16") R<T, bfloat16_t>::go(b, g, k, ng, nt, a);
  else return 4;
  return 0;
}

template <typename T, typename U> struct Fwd { static void go(int b, int g, int k, size_t ng, size_t nt, char** a) { run_fwd<T, U>(b, g, k, ng, nt, a); } };
template <typename T, typename U> struct Bwd { static void go(int b, int g, int k, size_t ng, size_t nt, char** a) { run_bwd<T, U>(b, g, k, ng, nt, a); } };

template <template <typename, typename> class R>
static int first(const std::string& t, const std::string& u, int b, int g, int k, size_t ng, size_t nt, char** a) {
  if (t == "f32") return second<R, float>(u, b, g, k, ng, nt, a);
  if (t == "f16") return second<R, float16_t>(u, b, g, k, ng, nt, a);
  if (t == "bf16") return second<R, bfloat16_t>(u, b, g, k, ng, nt, a);
  return 4;
}

int main(int argc, char** argv) {
  if (argc < 10) return 1;
  std::string job = argv[1];
  int bits = std::atoi(argv[4]), gs = std::atoi(argv[5]), kind = std::atoi(argv[6]);
  size_t ng = std::strtoull(argv[7], nullptr, 10), nt = std::strtoull(argv[8], nullptr, 10);
  if (job == "fwd") return first<Fwd>(argv[2], argv[3], bits, gs, kind, ng, nt, argv + 9);
  if (job == "bwd") return first<Bwd>(argv[2], argv[3], bits, gs, kind, ng, nt, argv + 9);
  if (job == "fpf") {
    std::string t = argv[2];
    if (t == "f32") run_fp<float>(gs, kind, ng, nt, argv + 9);
    else if (t == "f16") run_fp<float16_t>(gs, kind, ng, nt, argv + 9);
    else if (t == "bf16") run_fp<bfloat16_t>(gs, kind, ng, nt, argv + 9);
    else return 4;
    return 0;
  }
  return 1;
}
"""

_CODES = {mx.float32: "f32", mx.float16: "f16", mx.bfloat16: "bf16"}
_NP_BITS = {mx.float32: np.uint32, mx.float16: np.uint16, mx.bfloat16: np.uint16}


def harness_source() -> str:
    """The complete C++ translation unit: prelude, SIMD emulation, shared helpers, the
    bodies, driver."""
    fwd_args = (
        "const T* w, const float* p0, const float* p1, const int* meta, T* out, "
        "int BITS, int GS, int KIND, unsigned int qat_tid"
    )
    fp_args = "const T* w, const int* meta, T* out, int GS, int KIND, unsigned int qat_tid"
    bwd_args = (
        "const T* w, const C* cot, const float* p0, const float* p1, const int* meta, "
        "C* dw, float* red, int BITS, int GS, int KIND, unsigned int qat_tid"
    )
    return "\n".join(
        [
            PRELUDE,
            SIMD_EMULATION,
            sources.COMMON,
            sources.FP_COMMON,
            f"template <typename T, typename D>\nvoid qat_forward({fwd_args}) {{",
            sources.FORWARD_BODY,
            "}",
            f"template <typename T, typename C>\nvoid qat_backward({bwd_args}) {{",
            sources.BACKWARD_BODY,
            "}",
            f"template <typename T>\nvoid qat_fp_forward({fp_args}) {{",
            sources.FP_FORWARD_BODY,
            "}",
            DRIVER,
        ]
    )


def compiler() -> str | None:
    """The C++ compiler to use ($CXX, else g++, else c++), or None."""
    for c in (os.environ.get("CXX"), "g++", "c++"):
        if c and shutil.which(c):
            return c
    return None


def build(directory: str | os.PathLike) -> Path:
    """Compile the harness into `directory`; returns the executable's path.

    Raises:
        RuntimeError: no compiler, or the compilation failed (message has the compiler output).
    """
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX or install g++)")
    d = Path(directory)
    src, exe = d / "qat_harness.cpp", d / "qat_harness"
    src.write_text(harness_source())
    cmd = [cxx, "-std=c++17", "-O2", "-ffp-contract=off", "-o", str(exe), str(src)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-4000:]}")
    return exe


def threads_for(job: str, n_groups: int, group_size: int) -> int:
    """Threads a Metal launch of `job` starts for `n_groups` groups (the harness's default)."""
    return launch_geometry(n_groups, sources.threads_per_group(job, group_size))[0][0]


def _bits(a: mx.array) -> np.ndarray:
    """Raw bit pattern of a float array as a numpy unsigned array (bfloat16 included)."""
    return np.array(a.view(mx.uint32 if a.dtype == mx.float32 else mx.uint16))


def _from_bits(raw: bytes, dtype: mx.Dtype, shape) -> mx.array:
    u = np.frombuffer(raw, dtype=_NP_BITS[dtype]).reshape(shape)
    return mx.array(u).view(dtype)


class Harness:
    """Runs the compiled bodies on MLX arrays (files in a private temporary directory)."""

    def __init__(self, exe: str | os.PathLike):
        self.exe = str(exe)
        self.tmp = tempfile.mkdtemp(prefix="qat_harness_")

    def _write(self, name: str, a: mx.array) -> str:
        path = os.path.join(self.tmp, name)
        np.ascontiguousarray(_bits(a)).tofile(path)
        return path

    def _run(self, args: list[str]) -> None:
        r = subprocess.run([self.exe, *args], capture_output=True, text=True, check=False)
        if r.returncode:
            raise RuntimeError(f"harness {' '.join(args[:8])} exited {r.returncode}: {r.stderr}")

    def forward(self, w, kind, bits, gs, p0=None, p1=None, dequant_dtype=None, n_threads=None):
        """ŵ (w's shape and dtype) computed by the C++ build of FORWARD_BODY."""
        ng = w.size // gs
        unused = mx.zeros((1 if kind == sources.KIND_MINMAX else ng,), mx.float32)
        p0 = unused if p0 is None else p0.astype(mx.float32).reshape(-1)
        p1 = unused if p1 is None else p1.astype(mx.float32).reshape(-1)
        paths = [self._write("w", w), self._write("p0", p0), self._write("p1", p1)]
        out = os.path.join(self.tmp, "out")
        d = _CODES[dequant_dtype or w.dtype]
        head = ["fwd", _CODES[w.dtype], d, str(bits), str(gs), str(kind), str(ng)]
        self._run([*head, str(n_threads or threads_for("forward", ng, gs)), *paths, out])
        return _from_bits(Path(out).read_bytes(), w.dtype, w.shape)

    def backward(self, w, cot, kind, bits, gs, p0, p1=None, n_threads=None):
        """(dw, red) computed by the C++ build of BACKWARD_BODY."""
        ng = w.size // gs
        p1 = mx.zeros((ng,), mx.float32) if p1 is None else p1
        paths = [
            self._write("w", w),
            self._write("cot", cot),
            self._write("p0", p0.astype(mx.float32).reshape(-1)),
            self._write("p1", p1.astype(mx.float32).reshape(-1)),
        ]
        dw, red = os.path.join(self.tmp, "dw"), os.path.join(self.tmp, "red")
        head = ["bwd", _CODES[w.dtype], _CODES[cot.dtype], str(bits), str(gs), str(kind)]
        self._run(
            [*head, str(ng), str(n_threads or threads_for("backward", ng, gs)), *paths, dw, red]
        )
        red_arr = mx.array(np.fromfile(red, dtype=np.float32).reshape(ng, 2))
        return _from_bits(Path(dw).read_bytes(), cot.dtype, w.shape), red_arr

    def fp_forward(self, w, kind, gs, n_threads=None):
        """ŵ computed by the C++ build of FP_FORWARD_BODY (mxfp4/mxfp8/nvfp4)."""
        ng = w.size // gs
        out = os.path.join(self.tmp, "out")
        head = ["fpf", _CODES[w.dtype], "-", "-", str(gs), str(kind), str(ng)]
        self._run(
            [*head, str(n_threads or threads_for("fp_forward", ng, gs)), self._write("w", w), out]
        )
        return _from_bits(Path(out).read_bytes(), w.dtype, w.shape)


_shared: list = []


def shared() -> Harness | None:
    """One harness per process, built on first use in a temporary directory (None without a
    C++ compiler); the test modules share it instead of compiling their own."""
    if compiler() is None:
        return None
    if not _shared:
        _shared.append(Harness(build(tempfile.mkdtemp(prefix="qat_cpp_"))))
    return _shared[0]
