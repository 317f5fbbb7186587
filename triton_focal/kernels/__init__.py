"""Triton JIT kernels. Import only where Triton is installed."""
