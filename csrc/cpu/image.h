// One image's valid tokens on the CPU: rescaling, statistics and the snapped cosine distances
// that every selection method reads (conventions: ada_vtp_kernels/reference.py docstring).
#pragma once

#include <cstdint>
#include <tuple>
#include <vector>

#include <ATen/core/Tensor.h>

namespace ada_vtp::cpu {

// [n, D] any float -> [n, D] fp32 contiguous (reference.rescale): as given, or, when max|x|
// (amax, from check_finite_features) is outside [2^-56, 2^56], times the power of two that
// brings it into [0.5, 1), so that no square overflows or underflows.
at::Tensor rescale(const at::Tensor& x, double amax);

// Attention entropy (nats) of one image's valid scores [n]; all-zero scores count as uniform.
double attention_entropy_one(const at::Tensor& scores);

// Exact erank of rescaled fp32 rows [n, D]: fp64 eigenvalues of the smaller Gram matrix.
double erank_one(const at::Tensor& xs);

// at::linalg_eigvalsh / at::linalg_eigh, whose bits do not depend on the thread count.  MKL's
// threaded LAPACK rounds differently with torch.get_num_threads() (measured: eigvalsh of a
// 178 x 178 Gram, 1 vs 2 threads), so these run it on one thread (mkl_set_num_threads_local,
// this thread only).  With a torch built on another LAPACK they are the plain calls.
at::Tensor eigvalsh_sequential(const at::Tensor& a);
std::tuple<at::Tensor, at::Tensor> eigh_sequential(const at::Tensor& a);

// Rows of the snapped cosine distance d(i, .) of one image, each computed once.  With
// `full_gram` one n x n matrix product serves every row (the methods that compare all pairs,
// or where K rows would cost more); otherwise each requested row is one matrix-vector product.
class Distances {
 public:
  Distances(const at::Tensor& xs, bool full_gram, int64_t max_rows);
  int64_t size() const { return n_; }
  const float* row(int64_t i);
  // d(i, i), which is set rather than computed: 0, or 1 for a row below the norm clamp
  float self_distance(int64_t i) const { return tiny_[i] ? 1.0f : 0.0f; }

 private:
  void snap_row(float* row, int64_t i) const;

  int64_t n_;
  at::Tensor xn_;                 // [n, D] fp32, L2-normalised rows
  std::vector<uint8_t> tiny_;     // rows below the norm clamp: self-distance 1
  at::Tensor full_;               // [n, n] distances when full_gram
  std::vector<int64_t> slot_;     // token -> cached row slot, -1 when not computed
  std::vector<float> rows_;       // cached rows, max_rows x n
  int64_t used_ = 0;
};

}  // namespace ada_vtp::cpu
