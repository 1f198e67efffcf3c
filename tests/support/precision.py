"""Tolerances taken from the fp32 error of the computation itself, as flash-attention's tests do:
a result is close enough to an fp64 reference when its error is at most a few times the error
of PyTorch's own fp32 computation of the same thing, on this machine.  Nothing is a fixed
absolute tolerance, which one CPU's GEMM kernels meet and another's do not."""

import torch

FP32_UNIT = 2.0**-24


def assert_within_fp32_error(got: torch.Tensor, exact: torch.Tensor, fp32: torch.Tensor, factor: float = 3.0,
                             label: str = "") -> None:
    """max |got - exact| <= factor x max |fp32 - exact|, with `exact` an fp64 reference and `fp32`
    PyTorch's fp32 result (the baseline is at least one rounding of the largest value, so that an
    fp32 result that happens to be exact does not demand an exact `got`)."""
    exact = exact.double()
    error = (got.double() - exact).abs().max().item()
    baseline = max((fp32.double() - exact).abs().max().item(), FP32_UNIT * exact.abs().max().item())
    print(f"\n{label}: error {error:.2e}, PyTorch fp32's {baseline:.2e}")
    assert error <= factor * baseline, f"{label}: error {error:.2e} > {factor:g} x PyTorch fp32's {baseline:.2e}"
