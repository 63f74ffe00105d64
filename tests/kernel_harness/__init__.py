"""Test-only tools for the fused kernels (imported by tests/test_kernels*.py as a plain package).

    cpp.py             the kernel bodies of mlx_qat/kernels/sources.py built as C++ with g++
                       (`build`, `Harness`): every thread of a launch run on the CPU; flavour
                       "plain" (the bodies) or "metal"/"cuda" (the exact strings MLX gets, with
                       the backends' builtins given their semantics, under AddressSanitizer)
    simd_emulation.py  lockstep emulation of 32-lane SIMD groups for that build
    flavours.py        `g++ -fsyntax-only` of the exact Metal/CUDA sources in MLX's kernel shape
    standins.py        stand-ins for mlx_qat.kernels.gpu's launches and kernel objects (the C++
                       build, broken ones)

The parity check a user runs on a real GPU stays in the package: mlx_qat.quant.kernel_check.
"""
