"""`prune`: its reference (reference.py) and its Triton kernels."""
