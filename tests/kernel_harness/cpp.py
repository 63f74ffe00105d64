"""Plain-C++ build of the kernel bodies, so that they are tested on machines without a GPU.

The SAME body strings that `mlx_qat/kernels/gpu.py` hands to Metal/CUDA are pasted into C++ template functions
after a prelude that maps the few backend words onto C++: QAT_FN, the math macros, `float16_t`
(`_Float16`, g++ ≥ 12) and `bfloat16_t` (a struct converting with round-to-nearest-even and
MLX's NaN, 0x7FC0). BITS, GS and KIND become runtime arguments (the bodies only use them as
values), T/D/C stay template parameters. `main` emulates a launch: it runs the body for every
thread index of the grid, including the surplus threads a CUDA launch would start.

Flavours (`harness_source(flavour)`):
    "plain"  sources.BODIES after this file's own prelude (PRELUDE): the bodies' arithmetic.
    "metal"  the exact (header, body) strings `sources.metal_source` gives MLX, header included
    "cuda"   (the backend prelude: QAT_RINT → metal::rint / rintf, QAT_DIV → __fdiv_rn, the
             thread index line, QAT_SHFL_XOR → simd_shuffle_xor / __shfl_xor_sync, ...), after
             METAL_BUILTINS / CUDA_BUILTINS, which give those builtins their documented
             semantics in C++. The CUDA build runs the thread index formula on a real
             (blockIdx, blockDim, threadIdx) split of the launch ($QAT_BLOCK_DIM threads per
             block, set by `Harness` from launch.py's threadgroup).

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

from .simd_emulation import SIMD_CORE, SIMD_EMULATION

# Includes, bit casts, the 16-bit float types and the emulated CUDA block size: every flavour.
BASE = r"""
#include <cmath>
#include <csetjmp>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

static unsigned int qat_block_dim = 256;  // CUDA flavour: blockDim.x ($QAT_BLOCK_DIM)

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

# The plain build's own backend words (the Metal/CUDA builds get them from the real header).
PLAIN_MACROS = r"""
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
"""

PRELUDE = BASE + PLAIN_MACROS

# Metal's builtins as MSL specifies them (rint: to nearest, ties to even; as_type: a bit
# cast; simd_shuffle_xor: lane l gets lane l^mask's value, here from the lockstep emulation).
# QAT_THREAD_INDEX(t) declares what the Metal body reads: thread_position_in_grid.
METAL_BUILTINS = r"""
#define device
#define constant
#define thread
typedef unsigned int uint;
typedef unsigned short ushort;
struct uint3 { uint x, y, z; };
template <typename To, typename From> To as_type(From f) {
  static_assert(sizeof(To) == sizeof(From), "as_type needs equal sizes");
  To t; std::memcpy(&t, &f, sizeof(t)); return t;
}
inline float simd_shuffle_xor(float data, ushort mask) { return qat_shfl_xor(data, (int)mask); }
namespace metal {
inline float rint(float x) { return std::rint(x); }
inline float fabs(float x) { return std::fabs(x); }
inline float ldexp(float x, int e) { return std::ldexp(x, e); }
}
#define QAT_THREAD_INDEX(t) const uint3 thread_position_in_grid = {(uint)(t), 0u, 0u}
"""

# CUDA's builtins as the CUDA math API specifies them (the __f*_rn intrinsics: IEEE round to
# nearest, never contracted; the harness compiles with -ffp-contract=off). __shfl_xor_sync
# insists on the full-warp mask the bodies rely on (exit 9 otherwise). QAT_THREAD_INDEX(t)
# splits thread t of the launch into (blockIdx, threadIdx) with qat_block_dim per block.
CUDA_BUILTINS = r"""
#define __device__
#define __forceinline__ inline
#define __global__
struct qat_dim3 { unsigned int x, y, z; };
static qat_dim3 blockIdx, blockDim, threadIdx;
typedef float16_t __half;
typedef bfloat16_t __nv_bfloat16;
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline unsigned int __float_as_uint(float f) { return qat_f2u(f); }
inline float __uint_as_float(unsigned int u) { return qat_u2f(u); }
inline float __shfl_xor_sync(unsigned int mask, float var, int lane_mask, int width = 32) {
  if (mask != 0xffffffffu || width != 32) {
    std::fprintf(stderr, "__shfl_xor_sync: mask %x width %d (not the full warp)\n", mask, width);
    std::exit(9);
  }
  return qat_shfl_xor(var, lane_mask);
}
static inline void qat_cuda_thread(unsigned int t) {
  blockDim = {qat_block_dim, 1u, 1u};
  blockIdx = {t / qat_block_dim, 0u, 0u};
  threadIdx = {t % qat_block_dim, 0u, 0u};
}
#define QAT_THREAD_INDEX(t) qat_cuda_thread(t)
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

// The whole file: per-group parameter buffers keep the size the caller gave (gpu.py passes a
// 1-element dummy for a parameter the kind does not use), so a body reading past it is an
// out-of-bounds read, which the sanitized build reports.
template <typename X>
static std::vector<X> load_all(const char* path) {
  FILE* f = std::fopen(path, "rb");
  if (!f || std::fseek(f, 0, SEEK_END) != 0) { std::fprintf(stderr, "read %s\n", path); std::exit(2); }
  const long bytes = std::ftell(f);
  std::fclose(f);
  return load<X>(path, (size_t)bytes / sizeof(X));
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
  auto w = load<T>(a[0], ng * gs);
  auto p0 = load_all<float>(a[1]);
  auto p1 = load_all<float>(a[2]);
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
  auto p0 = load_all<float>(a[2]);
  auto p1 = load_all<float>(a[3]);
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
  if (const char* b = std::getenv("QAT_BLOCK_DIM")) qat_block_dim = (unsigned int)std::atoi(b);
  if (qat_block_dim == 0) return 1;
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


FLAVOURS = ("plain", "metal", "cuda")


def backend_strings(flavour: str) -> tuple[str, dict[str, str]]:
    """(header, {job: body}) exactly as gpu.py hands them to MLX for `flavour` ("metal" or
    "cuda"); the header is the same for every job."""
    source = {"metal": sources.metal_source, "cuda": sources.cuda_source}[flavour]
    headers = {source(job)[0] for job in sources.BODIES}
    assert len(headers) == 1, "gpu.py builds every job with one header"
    return headers.pop(), {job: source(job)[1] for job in sources.BODIES}


def harness_source(flavour: str = "plain") -> str:
    """The complete C++ translation unit of `flavour` (see the module docstring): prelude,
    SIMD emulation, shared helpers, the bodies, driver."""
    if flavour == "plain":
        head = [PRELUDE, SIMD_EMULATION, sources.COMMON, sources.FP_COMMON]
        bodies, tid, enter = sources.BODIES, "qat_tid", ""
    elif flavour in FLAVOURS:
        header, bodies = backend_strings(flavour)
        builtins = METAL_BUILTINS if flavour == "metal" else CUDA_BUILTINS
        head = [BASE, SIMD_CORE, builtins, header]
        tid, enter = "qat_launch_tid", "QAT_THREAD_INDEX(qat_launch_tid);"
    else:
        raise ValueError(f"harness_source: flavour {flavour!r}, choose one of {FLAVOURS}")
    fwd_args = (
        "const T* w, const float* p0, const float* p1, const int* meta, T* out, "
        f"int BITS, int GS, int KIND, unsigned int {tid}"
    )
    fp_args = f"const T* w, const int* meta, T* out, int GS, int KIND, unsigned int {tid}"
    bwd_args = (
        "const T* w, const C* cot, const float* p0, const float* p1, const int* meta, "
        f"C* dw, float* red, int BITS, int GS, int KIND, unsigned int {tid}"
    )
    return "\n".join(
        [
            *head,
            f"template <typename T, typename D>\nvoid qat_forward({fwd_args}) {{{enter}",
            bodies["forward"],
            "}",
            f"template <typename T, typename C>\nvoid qat_backward({bwd_args}) {{{enter}",
            bodies["backward"],
            "}",
            f"template <typename T>\nvoid qat_fp_forward({fp_args}) {{{enter}",
            bodies["fp_forward"],
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


SANITIZE = ("-fsanitize=address", "-fno-omit-frame-pointer")


def build(
    directory: str | os.PathLike, flavour: str = "plain", sanitize: bool | None = None
) -> Path:
    """Compile the harness of `flavour` into `directory`; returns the executable's path.

    `sanitize` (default: for the "metal" and "cuda" builds, which get gpu.py's buffers as they
    are): AddressSanitizer (SANITIZE), so that a body reading or writing outside a buffer (an
    input, a parameter's 1-element dummy, an output) fails its launch instead of passing. The
    plain build runs without it (~3x faster; the many tests of test_kernels_cpp.py use it).

    Raises:
        RuntimeError: no compiler, or the compilation failed (message has the compiler output).
    """
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX or install g++)")
    d = Path(directory)
    src, exe = d / f"qat_harness_{flavour}.cpp", d / f"qat_harness_{flavour}"
    src.write_text(harness_source(flavour))
    # Sanitized: -O0 (compiles in a third of -O2's time; the float operations are the same).
    sanitize = flavour != "plain" if sanitize is None else sanitize
    flags = ("-O0", *SANITIZE) if sanitize else ("-O2",)
    cmd = [cxx, "-std=c++17", *flags, "-ffp-contract=off", "-o", str(exe), str(src)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-4000:]}")
    return exe


def threads_for(job: str, n_groups: int, group_size: int) -> int:
    """Threads a Metal launch of `job` starts for `n_groups` groups (the harness's default)."""
    return launch_geometry(n_groups, sources.threads_per_group(job, group_size))[0][0]


def block_for(job: str, n_groups: int, group_size: int) -> int:
    """The threadgroup / CUDA block size launch.py picks for `job` (the CUDA build's
    blockDim.x)."""
    return launch_geometry(n_groups, sources.threads_per_group(job, group_size))[1][0]


def _bits(a: mx.array) -> np.ndarray:
    """Raw bit pattern of a float array as a numpy unsigned array (bfloat16 included)."""
    return np.array(a.view(mx.uint32 if a.dtype == mx.float32 else mx.uint16))


def _from_bits(raw: bytes, dtype: mx.Dtype, shape) -> mx.array:
    u = np.frombuffer(raw, dtype=_NP_BITS[dtype]).reshape(shape)
    return mx.array(u).view(dtype)


class Harness:
    """Runs the compiled bodies on MLX arrays (files in a private temporary directory).

    Each launch takes `n_threads` (default: the Metal grid of launch.py) and `block_dim` (the
    CUDA build's threads per block; default: launch.py's threadgroup)."""

    def __init__(self, exe: str | os.PathLike, flavour: str = "plain"):
        self.exe = str(exe)
        self.flavour = flavour
        self.tmp = tempfile.mkdtemp(prefix="qat_harness_")

    def _write(self, name: str, a: mx.array) -> str:
        path = os.path.join(self.tmp, name)
        np.ascontiguousarray(_bits(a)).tofile(path)
        return path

    def _run(self, args: list[str], block_dim: int) -> None:
        env = dict(os.environ, QAT_BLOCK_DIM=str(block_dim))
        # The test process may preload OpenBLAS (mlx_qat.blas); AddressSanitizer builds must
        # come first in the library list, and the harness needs no BLAS.
        env.pop("LD_PRELOAD", None)
        r = subprocess.run([self.exe, *args], capture_output=True, text=True, check=False, env=env)
        if r.returncode:
            raise RuntimeError(f"harness {' '.join(args[:8])} exited {r.returncode}: {r.stderr}")

    def forward(
        self,
        w,
        kind,
        bits,
        gs,
        p0=None,
        p1=None,
        dequant_dtype=None,
        n_threads=None,
        block_dim=None,
    ):
        """ŵ (w's shape and dtype) computed by the C++ build of FORWARD_BODY."""
        ng = w.size // gs
        unused = mx.zeros((1,), mx.float32)  # gpu.py's dummy for a parameter not read
        p0 = unused if p0 is None else p0.astype(mx.float32).reshape(-1)
        p1 = unused if p1 is None else p1.astype(mx.float32).reshape(-1)
        paths = [self._write("w", w), self._write("p0", p0), self._write("p1", p1)]
        out = os.path.join(self.tmp, "out")
        d = _CODES[dequant_dtype or w.dtype]
        head = ["fwd", _CODES[w.dtype], d, str(bits), str(gs), str(kind), str(ng)]
        n_threads = n_threads or threads_for("forward", ng, gs)
        self._run([*head, str(n_threads), *paths, out], block_dim or block_for("forward", ng, gs))
        return _from_bits(Path(out).read_bytes(), w.dtype, w.shape)

    def backward(self, w, cot, kind, bits, gs, p0, p1=None, n_threads=None, block_dim=None):
        """(dw, red) computed by the C++ build of BACKWARD_BODY."""
        ng = w.size // gs
        p1 = mx.zeros((1,), mx.float32) if p1 is None else p1  # gpu.py's dummy
        paths = [
            self._write("w", w),
            self._write("cot", cot),
            self._write("p0", p0.astype(mx.float32).reshape(-1)),
            self._write("p1", p1.astype(mx.float32).reshape(-1)),
        ]
        dw, red = os.path.join(self.tmp, "dw"), os.path.join(self.tmp, "red")
        head = ["bwd", _CODES[w.dtype], _CODES[cot.dtype], str(bits), str(gs), str(kind)]
        n_threads = n_threads or threads_for("backward", ng, gs)
        self._run(
            [*head, str(ng), str(n_threads), *paths, dw, red],
            block_dim or block_for("backward", ng, gs),
        )
        red_arr = mx.array(np.fromfile(red, dtype=np.float32).reshape(ng, 2))
        return _from_bits(Path(dw).read_bytes(), cot.dtype, w.shape), red_arr

    def fp_forward(self, w, kind, gs, n_threads=None, block_dim=None):
        """ŵ computed by the C++ build of FP_FORWARD_BODY (mxfp4/mxfp8/nvfp4)."""
        ng = w.size // gs
        out = os.path.join(self.tmp, "out")
        head = ["fpf", _CODES[w.dtype], "-", "-", str(gs), str(kind), str(ng)]
        n_threads = n_threads or threads_for("fp_forward", ng, gs)
        self._run(
            [*head, str(n_threads), self._write("w", w), out],
            block_dim or block_for("fp_forward", ng, gs),
        )
        return _from_bits(Path(out).read_bytes(), w.dtype, w.shape)


_shared: dict[str, Harness] = {}


def shared(flavour: str = "plain") -> Harness | None:
    """One harness per flavour and process, built on first use in a temporary directory (None
    without a C++ compiler); the test modules share it instead of compiling their own."""
    if compiler() is None:
        return None
    if flavour not in _shared:
        exe = build(tempfile.mkdtemp(prefix="qat_cpp_"), flavour)
        _shared[flavour] = Harness(exe, flavour)
    return _shared[flavour]
