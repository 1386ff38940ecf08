"""Triton kernels of the fused backend. Import these modules only when Triton is installed."""
