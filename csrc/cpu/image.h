// One image's valid tokens on the CPU: rescaling, statistics and the snapped cosine distances
// that every selection method reads (conventions: ada_vtp_kernels/kernels/prune/reference.py docstring).
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

namespace ada_vtp::cpu {

// [n, D] any float, finite -> [n, D] fp32 in a buffer of its own (reference.rescale): as given, or,
// when max|x| is outside [2^-56, 2^56], times the power of two
// that brings it into [0.5, 1), so that no square overflows or underflows.  Always a fresh
// buffer: the matrix products' rounding must not depend on where the image sits in the batch.
at::Tensor rescale(const at::Tensor& x);

// Attention entropy (nats) of one image's valid scores [n]; all-zero scores count as uniform.
// Summed in index order in fp64, so that no thread count changes a bit.
double attention_entropy_one(const at::Tensor& scores);

// Exact erank of rescaled fp32 rows [n, D]: fp64 eigenvalues of the smaller Gram matrix.
double erank_one(const at::Tensor& xs);

// Rows of the snapped cosine distance d(i, .) of one image, each computed once.  The cosines
// come from fp64 dot products of the fp32 rows, rounded once to fp32 (reference.cosine_distance),
// so they do not depend on the CPU's BLAS kernels.  With `full_gram` one triangle of the n x n
// fp64 Gram (blas::gram_lower_fp64, fixed blocks of rows) serves every row (the methods that compare all
// pairs, or where K rows would cost more); otherwise each requested row is n dot products.
class Distances {
 public:
  Distances(const at::Tensor& xs, bool full_gram, int64_t max_rows);
  int64_t size() const { return n_; }
  const float* row(int64_t i);
  // d(i, i), which is set rather than computed: 0, or 1 for a row below the norm clamp
  float self_distance(int64_t i) const { return tiny_[i] ? 1.0f : 0.0f; }

 private:
  // snapped distance of tokens i and j from their fp64 dot product
  float distance(double dot, int64_t i, int64_t j) const;
  void fill_full();

  int64_t n_;
  at::Tensor xs_;                 // [n, D] the rescaled fp32 rows (contiguous)
  std::vector<double> denom_;     // max(||x_i||, 1e-6)
  std::vector<uint8_t> tiny_;     // rows below the norm clamp: self-distance 1
  at::Tensor full_;               // [n, n] distances when full_gram
  std::vector<int64_t> slot_;     // token -> cached row slot, -1 when not computed
  std::vector<float> rows_;       // cached rows, max_rows x n
  std::vector<double> dots_;      // one row's dot products
  int64_t used_ = 0;
};

}  // namespace ada_vtp::cpu
