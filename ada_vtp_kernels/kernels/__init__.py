"""The kernels, one folder per op: each reference beside its Triton kernels (the C++ CPU kernels are csrc/cpu)."""
