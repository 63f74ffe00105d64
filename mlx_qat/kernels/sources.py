"""Kernel sources: ONE body per job, compiled as Metal, CUDA and plain C++.

Layouts (threads per group: `threads_per_group(job, GS)`; the grid: `launch.py`):
    forward,     W = min(GS, 32) lanes of a SIMD group (Metal) / warp (CUDA) per group of GS
    fp_forward   consecutive elements; lane l owns elements l, l+W, ..., so every access of the
                 SIMD group touches 32 consecutive elements (coalesced). The min/max kinds
                 reduce each lane's max/min (fp: max|w|) over the W lanes with a shuffle-xor
                 butterfly, then every lane computes the group's grid itself (identical float
                 ops). nvfp4 (GS = 16) puts two groups in a SIMD group.
    backward     one thread per group, no cross-thread communication (uncoalesced).
Thread index: `qat_tid`. The forwards' guard depends only on the SIMD group (qat_tid / 32), so
a surplus warp leaves as a whole and all 32 lanes of a live one reach the shuffles, as CUDA's
`__shfl_xor_sync(0xffffffff, ...)` requires (launch.py makes grids and threadgroups multiples
of 32; Metal splits a threadgroup into SIMD groups in thread order, as MLX's quantizer assumes).

Cross-lane reduction: the butterfly v = qat_max(v, shuffle_xor(v, o)), o = W/2, ..., 1, written
once in COMMON; only QAT_SHFL_XOR differs per backend (C++: a lockstep emulation in
tests/kernel_harness/). Metal's `simd_max` is not used: its NaN rule is unspecified, and a NaN
anywhere must make the group's max NaN, as on MLX's CPU. max/min are exact, so the grid equals
the sequential one bit for bit (only a zero's sign and a NaN's payload can depend on the order,
and neither changes ŵ).

Numerics (the canonical grid = MLX's CPU `mx.quantize`, see quant/affine.py): float32
statistics with w_max NOT clamped at 0, true division, rint (ties to even), dequantisation in
the dequant dtype D with one rounding after every operation, ŵ = D(D(D(code)·D(s)) + D(b)),
then cast to the weight dtype T. For 16-bit D each step computed in float32 and rounded to D
equals D arithmetic (the product of two D values is exact in float32). Arithmetic goes through
QAT_MUL/QAT_ADD/QAT_DIV so that CUDA uses the `__f*_rn` intrinsics, never contracted into FMAs;
Metal gets `#pragma clang fp contract(off)` (to be verified on a Mac).

Kinds (template int KIND):
    0 min/max    s, b from the group's min/max              x = (w − b)/s, code = clip(rint x, 0, n)
    1 learned    s = p0[g] (|s| ≥ 1e-7 already), b = p1[g]  same element rule as 0
    2 LSQ        α = p0[g]  x = w/α, q = clip(rint x, Qn, Qp), ŵ from (q − Qn, α, α·Qn)
    3 SEQ 2-bit  α = p0[g]  r = rint(2·clip(x, ±c) − ½), ŵ from (r + 2, α/2, −¾α)
    4 sign       α = p0[g]  ŵ = T(sign(x)·α)
    5–7          mxfp4/mxfp8/nvfp4: fp_sources.py (its helpers join COMMON in every header)
The backward (kinds 1–4) writes dw = cot·[inside] and per-group float32 partial sums
red[g] = (Σ cot·t0, Σ t1), t0 and t1 the integrands of the scale and bias gradients.
"""

from __future__ import annotations

import numpy as np

from .fp_sources import FP_COMMON, FP_FORWARD_BODY, FP_INPUTS, FP_OUTPUTS

KIND_MINMAX, KIND_LEARNED, KIND_LSQ, KIND_SEQ, KIND_SIGN = 0, 1, 2, 3, 4
SEQ_CLIP = 0.99  # must equal quant.lsq.SEQ_CLIP (a leaf keeps its own copy; checked in tests)
LANES = 32  # SIMD group / warp width: Apple GPUs and NVIDIA both have 32 (QAT_LANES)


def threads_per_group(job: str, group_size: int) -> int:
    """Threads launched per quantization group: min(GS, 32) for the forwards, 1 for the backward."""
    return 1 if job == "backward" else min(group_size, LANES)


def _f32_literal(v: float) -> str:
    """A C float literal that parses to exactly float32(v)."""
    return repr(float(np.float32(v))) + "f"


# Helpers shared verbatim by all three backends (QAT_FN and the math macros differ).
COMMON = f"""
#define QAT_SEQ_CLIP {_f32_literal(SEQ_CLIP)}
#define QAT_LANES {LANES}

// MLX CPU maximum/minimum: NaN in the first operand wins, else the comparison picks.
QAT_FN float qat_max(float a, float b) {{ return (a != a || a > b) ? a : b; }}
QAT_FN float qat_min(float a, float b) {{ return (a != a || a < b) ? a : b; }}
// mx.clip = minimum(maximum(x, lo), hi)
QAT_FN float qat_clip(float x, float lo, float hi) {{ return qat_min(qat_max(x, lo), hi); }}
QAT_FN float qat_sign(float x) {{ return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f); }}

// Round a float to dtype D and back (exact for D = float).
template <typename D>
QAT_FN float qat_cast(float x) {{ return static_cast<float>(static_cast<D>(x)); }}

// MLX's CPU dequantisation in dtype D: D(code)*D(s) + D(b), rounding after each operation.
template <typename D>
QAT_FN float qat_dequant(float code, float s, float b) {{
  float p = qat_cast<D>(QAT_MUL(qat_cast<D>(code), qat_cast<D>(s)));
  return qat_cast<D>(QAT_ADD(p, qat_cast<D>(b)));
}}

// Max/min over each aligned block of `width` lanes (a power of two ≤ 32) of a SIMD group, with
// qat_max's NaN rule: a butterfly, after the step with offset o every lane holds the max over
// its aligned block of 2o lanes. All 32 lanes must call it together (uniform control flow).
QAT_FN float qat_lanes_max(float v, int width) {{
  for (int o = width / 2; o > 0; o /= 2) {{
    v = qat_max(v, QAT_SHFL_XOR(v, o));
  }}
  return v;
}}
QAT_FN float qat_lanes_min(float v, int width) {{
  for (int o = width / 2; o > 0; o /= 2) {{
    v = qat_min(v, QAT_SHFL_XOR(v, o));
  }}
  return v;
}}

struct qat_grid {{ float s; float b; }};

// MLX's min/max grid (quant/affine.py): scale may be negative, 0 lands on the grid.
QAT_FN qat_grid qat_minmax_grid(float w_max, float w_min, float n) {{
  bool side = QAT_FABS(w_min) > QAT_FABS(w_max);
  float s = qat_max(QAT_DIV(QAT_SUB(w_max, w_min), n), 1e-7f);
  s = side ? s : -s;
  float edge = side ? w_min : w_max;
  float q0 = QAT_RINT(QAT_DIV(edge, s));
  qat_grid g;
  g.s = (q0 != 0.0f) ? QAT_DIV(edge, q0) : s;
  g.b = (q0 != 0.0f) ? edge : 0.0f;
  return g;
}}
"""

METAL_PRELUDE = """
#pragma clang fp contract(off)
#define QAT_FN inline
#define QAT_RINT(x) metal::rint(x)
#define QAT_FABS(x) metal::fabs(x)
#define QAT_DIV(a, b) ((a) / (b))
#define QAT_MUL(a, b) ((a) * (b))
#define QAT_ADD(a, b) ((a) + (b))
#define QAT_SUB(a, b) ((a) - (b))
#define QAT_F2U(x) as_type<uint>(x)
#define QAT_U2F(x) as_type<float>(x)
#define QAT_LDEXP(x, e) metal::ldexp((x), (e))
#define QAT_SHFL_XOR(v, o) simd_shuffle_xor((v), (ushort)(o))
"""

CUDA_PRELUDE = """
#define QAT_FN __device__ __forceinline__
#define QAT_RINT(x) rintf(x)
#define QAT_FABS(x) fabsf(x)
#define QAT_DIV(a, b) __fdiv_rn((a), (b))
#define QAT_MUL(a, b) __fmul_rn((a), (b))
#define QAT_ADD(a, b) __fadd_rn((a), (b))
#define QAT_SUB(a, b) __fsub_rn((a), (b))
#define QAT_F2U(x) __float_as_uint(x)
#define QAT_U2F(x) __uint_as_float(x)
#define QAT_LDEXP(x, e) ldexpf((x), (e))
#define QAT_SHFL_XOR(v, o) __shfl_xor_sync(0xffffffffu, (v), (o))
"""

# First line of the body per backend: MLX adds Metal attributes by finding their names in the
# *source* string, so the thread index must be spelled out there, not hidden in a macro.
METAL_TID = "const uint qat_tid = thread_position_in_grid.x;\n"
CUDA_TID = "const unsigned int qat_tid = blockIdx.x * blockDim.x + threadIdx.x;\n"

# Inputs: w (T), p0, p1 (float32 per group; a 1-element dummy where the kind reads none),
# meta (int32: [number of groups]). Output: out (T). Templates: T, D, BITS, GS (× 32), KIND.
FORWARD_INPUTS = ("w", "p0", "p1", "meta")
FORWARD_OUTPUTS = ("out",)
FORWARD_BODY = """
const unsigned int qat_group = qat_tid / QAT_LANES;
const unsigned int qat_lane = qat_tid % QAT_LANES;
// Uniform over the SIMD group: a surplus warp leaves as a whole, live warps shuffle with 32 lanes.
if (qat_group >= (unsigned int)meta[0]) return;
// Lane l handles elements l, l + 32, ...: each access of the SIMD group is 32 consecutive ones.
const size_t base = (size_t)qat_group * (size_t)GS + qat_lane;
const int per_lane = GS / QAT_LANES;
const float n = (float)((1 << BITS) - 1);
const float qn = (float)(-(1 << (BITS - 1)));
const float qp = (float)((1 << (BITS - 1)) - 1);
float s = 0.0f;
float b = 0.0f;
if (KIND == 0) {
  float hi = static_cast<float>(w[base]);
  float lo = hi;
  for (int j = 1; j < per_lane; ++j) {
    float v = static_cast<float>(w[base + (size_t)j * QAT_LANES]);
    hi = qat_max(v, hi);
    lo = qat_min(v, lo);
  }
  // Every lane gets the group's max/min and computes the same grid (no broadcast needed).
  qat_grid g = qat_minmax_grid(qat_lanes_max(hi, QAT_LANES), qat_lanes_min(lo, QAT_LANES), n);
  s = g.s;
  b = g.b;
} else {
  s = p0[qat_group];
  b = KIND == 1 ? p1[qat_group] : 0.0f;  // p1 is a 1-element dummy for LSQ/SEQ/sign
}
for (int j = 0; j < per_lane; ++j) {
  const size_t i = base + (size_t)j * QAT_LANES;
  float v = static_cast<float>(w[i]);
  float r;
  if (KIND == 0 || KIND == 1) {
    float q = qat_clip(QAT_RINT(QAT_DIV(QAT_SUB(v, b), s)), 0.0f, n);
    r = qat_dequant<D>(q, s, b);
  } else if (KIND == 2) {
    float q = qat_clip(QAT_RINT(QAT_DIV(v, s)), qn, qp);
    r = qat_dequant<D>(QAT_SUB(q, qn), s, QAT_MUL(s, qn));
  } else if (KIND == 3) {
    float y = QAT_MUL(qat_clip(QAT_DIV(v, s), -QAT_SEQ_CLIP, QAT_SEQ_CLIP), 2.0f);
    float q = QAT_RINT(QAT_SUB(y, 0.5f));
    r = qat_dequant<D>(QAT_ADD(q, 2.0f), QAT_MUL(s, 0.5f), QAT_MUL(s, -0.75f));
  } else {
    r = QAT_MUL(qat_sign(QAT_DIV(v, s)), s);
  }
  out[i] = static_cast<T>(r);
}
"""

# Inputs: w (T), cot (C), p0, p1 (float32 per group; p1 a 1-element dummy for kinds 2-4), meta.
# Outputs: dw (C), red (float32, 2 per group). Templates: T, C, BITS, GS, KIND (1..4).
BACKWARD_INPUTS = ("w", "cot", "p0", "p1", "meta")
BACKWARD_OUTPUTS = ("dw", "red")
BACKWARD_BODY = """
if (qat_tid >= (unsigned int)meta[0]) return;
const size_t base = (size_t)qat_tid * (size_t)GS;
const float n = (float)((1 << BITS) - 1);
const float qn = (float)(-(1 << (BITS - 1)));
const float qp = (float)((1 << (BITS - 1)) - 1);
const float s = p0[qat_tid];
const float b = KIND == 1 ? p1[qat_tid] : 0.0f;  // p1 is a 1-element dummy for kinds 2-4
float acc0 = 0.0f;
float acc1 = 0.0f;
for (int i = 0; i < GS; ++i) {
  float v = static_cast<float>(w[base + i]);
  float c = static_cast<float>(cot[base + i]);
  bool inside;
  float t0;
  float t1 = 0.0f;
  if (KIND == 1) {
    float x = QAT_DIV(QAT_SUB(v, b), s);
    float code = qat_clip(QAT_RINT(x), 0.0f, n);
    inside = (x >= 0.0f) && (x <= n);
    t0 = inside ? QAT_SUB(code, x) : code;
    t1 = inside ? 0.0f : c;
  } else if (KIND == 2) {
    float x = QAT_DIV(v, s);
    float q = qat_clip(QAT_RINT(x), qn, qp);
    inside = (x >= qn) && (x <= qp);
    t0 = inside ? QAT_SUB(q, x) : q;
  } else if (KIND == 3) {
    float x = QAT_DIV(v, s);
    float y = QAT_MUL(qat_clip(x, -QAT_SEQ_CLIP, QAT_SEQ_CLIP), 2.0f);
    float q = QAT_MUL(QAT_ADD(QAT_RINT(QAT_SUB(y, 0.5f)), 0.5f), 0.5f);
    inside = QAT_FABS(x) <= QAT_SEQ_CLIP;
    t0 = inside ? QAT_SUB(q, x) : QAT_MUL(qat_sign(x), 0.75f);
  } else {
    float x = QAT_DIV(v, s);
    inside = QAT_FABS(x) <= 1.0f;
    t0 = qat_sign(x);
  }
  dw[base + i] = static_cast<C>(inside ? c : 0.0f);
  acc0 = QAT_ADD(acc0, QAT_MUL(c, t0));
  acc1 = QAT_ADD(acc1, t1);
}
red[2 * (size_t)qat_tid] = acc0;
red[2 * (size_t)qat_tid + 1] = acc1;
"""

BODIES = {"forward": FORWARD_BODY, "backward": BACKWARD_BODY, "fp_forward": FP_FORWARD_BODY}
IO = {
    "forward": (FORWARD_INPUTS, FORWARD_OUTPUTS),
    "backward": (BACKWARD_INPUTS, BACKWARD_OUTPUTS),
    "fp_forward": (FP_INPUTS, FP_OUTPUTS),
}


def metal_source(job: str) -> tuple[str, str]:
    """(header, body) for `mx.fast.metal_kernel`."""
    return METAL_PRELUDE + COMMON + FP_COMMON, METAL_TID + BODIES[job]


def cuda_source(job: str) -> tuple[str, str]:
    """(header, body) for `mx.fast.cuda_kernel`."""
    return CUDA_PRELUDE + COMMON + FP_COMMON, CUDA_TID + BODIES[job]
