"""Test-only tools for the fused kernels (imported by tests/test_kernels*.py as a plain package).

    cpp.py             the kernel bodies of mlx_qat/kernels/sources.py built as plain C++ with
                       g++ (`build`, `Harness`): every thread of a launch run on the CPU
    simd_emulation.py  lockstep emulation of 32-lane SIMD groups for that build
    flavours.py        `g++ -fsyntax-only` of the exact Metal/CUDA sources with stubbed builtins
    standins.py        stand-ins for mlx_qat.kernels.gpu's launches (the C++ build, broken ones)

The parity check a user runs on a real GPU stays in the package: mlx_qat.quant.kernel_check.
"""
