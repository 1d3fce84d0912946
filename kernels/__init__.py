"""Triton kernels of dil_fast, installed as the subpackage ``dil_fast.kernels``.

One module per op family: private ``@triton.jit`` kernels plus their host launchers.
Only ``dil_fast.backends`` imports this package; everything else goes through it.
"""
