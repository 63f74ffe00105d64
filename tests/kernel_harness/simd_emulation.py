"""Lockstep emulation of 32-lane SIMD groups (warps) for the plain-C++ build of the bodies.

The forward body reduces over the 32 lanes of a SIMD group with `QAT_SHFL_XOR(v, o)` (lane l
receives lane l^o's value, all lanes at once). A CPU runs one lane at a time, so `qat_launch`
emulates lockstep execution by replay:

    threads are taken 32 at a time as one SIMD group (the last one may be short, as a
    launch's last partial warp would be). The body runs for each lane in turn; at its k-th
    shuffle a lane posts its value and is stopped (longjmp back to qat_launch). Once every
    lane has posted shuffle k, all lanes run again from the start, and shuffles 0..k now
    return the partner lane's posted value, until every lane finishes.

Replay is exact for bodies that are deterministic and whose only side effects are stores of
values (a replay stores the same values again); the bodies' stores all come after their
shuffles anyway. It also checks what real hardware gets silently wrong, each failure exiting
with its own status:
    6  divergence: some lanes finish (or return early) while others wait at a shuffle, or a
       replay posts another value or offset than before;
    7  a shuffle reads a lane that the launch did not start;
    8  more than 64 shuffles in one body (the emulator's table size).
Bodies without shuffles run once per thread. Needs `qat_f2u` and <csetjmp>, <cstdio>,
<cstdlib> (cpp.PRELUDE); the body functions must be trivially destructible frames (they are:
floats, ints and pointers), which is what makes leaving them by longjmp well defined.
"""

from __future__ import annotations

# The emulator itself: `qat_shfl_xor` and `qat_launch`. The Metal/CUDA builds of the exact
# backend sources reach qat_shfl_xor through their builtins' stubs (cpp.METAL_BUILTINS /
# CUDA_BUILTINS); the plain build maps QAT_SHFL_XOR onto it directly (SIMD_EMULATION).
SIMD_CORE = r"""
struct qat_simd {
  static const int kLanes = 32, kMaxShuffles = 64;
  int lanes;   // lanes that exist in this SIMD group
  int lane;    // the lane now running
  int point;   // shuffles this lane has passed in this replay
  int known;   // shuffles that every lane has posted
  float posted[kMaxShuffles][kLanes];
  int offset[kMaxShuffles][kLanes];
  std::jmp_buf stop;
};
static qat_simd qat_sg;

static void qat_fail(int code, const char* what, int k) {
  std::fprintf(stderr, "SIMD emulation: %s (shuffle %d, lane %d)\n", what, k, qat_sg.lane);
  std::exit(code);
}

static float qat_shfl_xor(float v, int o) {
  qat_simd& e = qat_sg;
  const int k = e.point++;
  if (k >= qat_simd::kMaxShuffles) qat_fail(8, "too many shuffles", k);
  if (k < e.known) {
    if (qat_f2u(v) != qat_f2u(e.posted[k][e.lane]) || o != e.offset[k][e.lane])
      qat_fail(6, "a replay posted another value or offset", k);
    const int src = e.lane ^ o;
    if (src < 0 || src >= e.lanes) qat_fail(7, "shuffle from a lane that was not launched", k);
    return e.posted[k][src];
  }
  e.posted[k][e.lane] = v;
  e.offset[k][e.lane] = o;
  std::longjmp(e.stop, 1);
}

// Runs body(tid) for every tid in [0, n_threads), 32 consecutive threads per SIMD group.
template <typename F>
static void qat_launch(size_t n_threads, F body) {
  qat_simd& e = qat_sg;
  for (size_t first = 0; first < n_threads; first += qat_simd::kLanes) {
    const size_t left = n_threads - first;
    e.lanes = (int)(left < (size_t)qat_simd::kLanes ? left : (size_t)qat_simd::kLanes);
    for (e.known = 0;; ++e.known) {
      volatile int stopped = 0;  // changed after setjmp returns: volatile keeps it defined
      for (e.lane = 0; e.lane < e.lanes; ++e.lane) {
        e.point = 0;
        if (setjmp(e.stop) == 0) {
          body((unsigned int)(first + (size_t)e.lane));
          if (e.point != e.known) qat_fail(6, "a lane skipped shuffles the others made", e.point);
        } else {
          stopped = stopped + 1;
        }
      }
      if (stopped == 0) break;
      if (stopped != e.lanes) qat_fail(6, "some lanes finished while others shuffle", e.known);
    }
  }
}
"""

SIMD_EMULATION = "#define QAT_SHFL_XOR(v, o) qat_shfl_xor((v), (o))\n" + SIMD_CORE
