"""Fused fake-quant body for the microscaling float formats (mxfp4, mxfp8, nvfp4).

Layout as `sources.py`'s forward. nvfp4's 16-element groups put two groups in a SIMD group: with
an odd number of groups the last SIMD group's upper lanes have no group and only take part in
the shuffles (all 32 must). The math is quant/fp.py's (MLX 0.32.4's CPU quantizer), every step
computed in float32 and rounded to the weight dtype T, as MLX's CPU does for 16-bit T:

    mxfp4/mxfp8   a = T(max|g| / 6 or 448); e = min{e : 2^e ≥ a} (0 if a = 0), which equals
                  MLX's rint(log2 a) bumped by one when 2^e < a; scale byte = e + 127;
                  x = T(w / T(2^e)); element = FP4 argmin (distances in T, ties to the
                  smaller magnitude, +0 over −0) or e4m3(x); ŵ = T(elem · T(2^(byte − 127)))
    nvfp4         a = T(max|g| / 6); byte = e4m3(float(a)); x = float(T(w / T(dec(byte))));
                  FP4 with float32 distances; ŵ = T(elem · T(dec(byte)))

e4m3 encode is MLX's CPU `ToFP8` (round to nearest even, saturating to ±448, sign kept); decode
is exact (0x7F/0xFF decode to ±480, as in MLX). Inputs w (T), meta (int32 [n_groups]); output
out (T); templates T, GS, KIND (5 mxfp4, 6 mxfp8, 7 nvfp4).
"""

from __future__ import annotations

KIND_MXFP4, KIND_MXFP8, KIND_NVFP4 = 5, 6, 7
FP_KINDS = {"mxfp4": KIND_MXFP4, "mxfp8": KIND_MXFP8, "nvfp4": KIND_NVFP4}

FP_INPUTS = ("w", "meta")
FP_OUTPUTS = ("out",)

FP_COMMON = """
// MLX's CPU ToFP8: float -> e4m3 byte (RNE, saturating at 0x7E, sign kept; NaN -> +-448).
QAT_FN unsigned int qat_to_fp8(float f) {
  unsigned int bits = QAT_F2U(f);
  const unsigned int sign = bits & 0x80000000u;
  bits = bits ^ sign;
  const unsigned int denorm = 141u << 23;
  const unsigned int low_bits = QAT_F2U(QAT_ADD(QAT_U2F(bits), QAT_U2F(denorm)));
  const unsigned int r_low = (low_bits - denorm) & 255u;
  const unsigned int odd = (bits >> 20) & 1u;
  const unsigned int high = bits + ((unsigned int)(7 - 127) << 23) + 0x7FFFFu + odd;
  const unsigned int r_high = (high >> 20) & 255u;
  unsigned int r = bits < (121u << 23) ? r_low : r_high;
  r = bits >= (543u << 21) ? 0x7Eu : r;
  return r | (sign >> 24);
}

// Exact e4m3 decode (as MLX: the 7 low bits read as an f16 times 256).
QAT_FN float qat_from_fp8(unsigned int b) {
  const int e = (int)((b >> 3) & 15u);
  const int m = (int)(b & 7u);
  const float v = e == 0 ? QAT_LDEXP((float)m, -9) : QAT_LDEXP((float)(8 + m), e - 10);
  return (b & 128u) ? -v : v;
}

// min{e : 2^e >= a} for finite a > 0 (subnormals scaled up by 2^64 first).
QAT_FN int qat_ceil_log2(float a) {
  int bias = 0;
  if (a < 1.17549435e-38f) {
    a = QAT_MUL(a, 18446744073709551616.0f);
    bias = 64;
  }
  const unsigned int bits = QAT_F2U(a);
  int e = (int)((bits >> 23) & 255u) - 127;
  if ((bits & 0x7FFFFFu) != 0u) {
    e += 1;
  }
  return e - bias;
}

// FP4 e2m1 code of x with distances rounded to dtype D (MLX's argmin, ties to the lower code).
template <typename D>
QAT_FN unsigned int qat_fp4_code(float x) {
  const float lv[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  const float m = QAT_FABS(x);
  unsigned int k = 0u;
  float prev = qat_cast<D>(QAT_FABS(QAT_SUB(m, lv[0])));
  for (int i = 1; i < 8; ++i) {
    const float d = qat_cast<D>(QAT_FABS(QAT_SUB(m, lv[i])));
    k += (d < prev) ? 1u : 0u;
    prev = d;
  }
  return (x < 0.0f && k > 0u) ? k + 8u : k;
}

QAT_FN float qat_fp4_value(unsigned int code) {
  const float lv[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  const float v = lv[code & 7u];
  return (code & 8u) ? -v : v;
}
"""

FP_FORWARD_BODY = """
const unsigned int qat_width = GS < QAT_LANES ? GS : QAT_LANES;  // lanes per group
const unsigned int qat_group = qat_tid / qat_width;
const unsigned int qat_lane = qat_tid % qat_width;
const unsigned int qat_groups = (unsigned int)meta[0];
// Leave by whole SIMD groups (when its first group is past the end): the shuffles need all 32.
if ((qat_tid - qat_tid % QAT_LANES) / qat_width >= qat_groups) return;
const bool live = qat_group < qat_groups;
const size_t base = (size_t)qat_group * (size_t)GS + qat_lane;
const int per_lane = GS / qat_width;
float amax = 0.0f;  // |w| >= +0, so +0 is qat_max's identity here (and NaN still wins)
for (int j = 0; j < per_lane; ++j) {
  if (live) {
    amax = qat_max(QAT_FABS(static_cast<float>(w[base + (size_t)j * qat_width])), amax);
  }
}
amax = qat_lanes_max(amax, qat_width);
const float a = qat_cast<T>(QAT_DIV(amax, KIND == 6 ? 448.0f : 6.0f));
float div;    // elements are w / div (in T)
float scale;  // dequantisation scale (a T value)
unsigned int nv_byte = 0u;
if (KIND == 7) {
  nv_byte = qat_to_fp8(a);
  div = qat_cast<T>(qat_from_fp8(nv_byte));
  scale = div;
} else {
  const int e = a == 0.0f ? 0 : qat_ceil_log2(a);
  div = qat_cast<T>(QAT_LDEXP(1.0f, e));
  const int sbyte = (e + 127) & 255;
  scale = qat_cast<T>(QAT_LDEXP(1.0f, sbyte - 127));
}
for (int j = 0; j < per_lane && live; ++j) {
  const size_t i = base + (size_t)j * qat_width;
  const float x = qat_cast<T>(QAT_DIV(static_cast<float>(w[i]), div));
  float elem;
  if (KIND == 6) {
    elem = qat_cast<T>(qat_from_fp8(qat_to_fp8(x)));
  } else if (KIND == 7) {
    elem = qat_fp4_value(qat_fp4_code<float>(x));
  } else {
    elem = qat_fp4_value(qat_fp4_code<T>(x));
  }
  out[i] = static_cast<T>(QAT_MUL(elem, scale));
}
"""
