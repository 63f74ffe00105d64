"""Run scipy's L-BFGS-B on one BLAS thread.

scipy ≥ 1.15 runs L-BFGS-B in C on top of its bundled OpenBLAS (`libscipy_openblas`). Its
BLAS calls are on 16 × m matrices, where a threaded BLAS only adds hand-offs: on a 2-core
machine that is busy with something else a fit ran 12× slower (40 s instead of 3.5 s, nearly
all of it inside `setulb`). `one_blas_thread()` sets scipy's OpenBLAS to one thread for the
duration of a block and restores the previous count afterwards. It touches scipy's own
OpenBLAS only (not numpy's, not MLX's), and does nothing where it is not found (macOS wheels
use Accelerate; a source build may link another BLAS).
"""

from __future__ import annotations

import ctypes
import glob
import os
from contextlib import contextmanager
from functools import cache

_SYMBOLS = ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads")


@cache
def _scipy_openblas() -> tuple | None:
    """(set, get) of scipy's bundled OpenBLAS, or None."""
    try:
        import scipy
    except ImportError:
        return None
    libs = os.path.join(os.path.dirname(os.path.dirname(scipy.__file__)), "scipy.libs")
    for path in sorted(glob.glob(os.path.join(libs, "libscipy_openblas*"))):
        try:
            lib = ctypes.CDLL(path)
            setter, getter = (getattr(lib, s) for s in _SYMBOLS)
        except (OSError, AttributeError):
            continue
        setter.argtypes, setter.restype = [ctypes.c_int], None
        getter.argtypes, getter.restype = [], ctypes.c_int
        return setter, getter
    return None


@contextmanager
def one_blas_thread():
    """Within the block, scipy's OpenBLAS runs on one thread (see the module docstring)."""
    fns = _scipy_openblas()
    if fns is None:
        yield
        return
    setter, getter = fns
    before = int(getter())
    setter(1)
    try:
        yield
    finally:
        setter(max(before, 1))
