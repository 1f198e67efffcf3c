// The SVD-free erank estimator ("fast"): deflated stochastic Lanczos quadrature with products of
// X only.  The method, its parameters and its error: ada_vtp_kernels/reference.py,
// erank_fast_one, which this follows step by step (fp32 products, fp64 reductions; the
// orthonormalisation by Cholesky QR twice, Gram-Schmidt in exact arithmetic).
#pragma once

#include <ATen/core/Tensor.h>

namespace ada_vtp::cpu {

// Estimated erank of rescaled fp32 rows [n, D] (contiguous).
double erank_fast_one(const at::Tensor& xs);

}  // namespace ada_vtp::cpu
