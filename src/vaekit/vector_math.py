"""Makes torch's vector math functions give the same bits in every process (called once, at import).

On x86 builds with MKL, ATen computes tanh, exp, erf, sqrt, ... of float32/float64 CPU tensors with
MKL's VML (``vmsTanh`` and kin, in high-accuracy mode), each OpenMP thread on its share of the tensor.
The *first* call of a VML function in a process sometimes goes wrong when two threads make it at once:
one thread's share comes out at about 5e-5 relative error (an approximate-reciprocal accuracy, not
HA's 1 ulp), and every later call is right. Measured on 2026-12-02, Intel Xeon, 2 threads, torch 2.13
(MKL 2024.2): a 131072-element ``torch.tanh`` as the process's first VML call gave this in about 1 in
30 fresh processes, more often with other work loading the CPU; in TAEF2's decoder (whose first layer
is ``tanh(x / 3) * 3``) it moved the whole decode by up to 2.7e-4 in some processes only.

Calling each function once on a tensor too small to be split across threads initializes VML in one
thread, before any two threads can race. It costs well under a millisecond. The untiled model gains
from it too: its own tanh is the same call.
"""

from __future__ import annotations

import torch

__all__ = ["VML_FUNCTIONS", "warm_up"]

#: the unary functions ATen hands to MKL's VML for float32 and float64 (ATen/cpu/vml.h, IMPLEMENT_VML_MKL)
VML_FUNCTIONS = ("acos", "asin", "atan", "cos", "erf", "erfc", "erfinv", "exp", "log", "log10", "log2", "sin",
                 "sqrt", "tan", "tanh", "trunc")

_done = False


def warm_up() -> None:
    """Call every VML-backed function once, in this thread, on 64 values in (0, 1) (all in every
    function's domain): far below ATen's grain size, so no other thread takes part."""
    global _done
    if _done:
        return
    for dtype in (torch.float32, torch.float64):
        x = torch.linspace(0.1, 0.9, 64, dtype=dtype)
        for name in VML_FUNCTIONS:
            getattr(torch, name)(x)
    _done = True
