#include "image.h"

#include <algorithm>
#include <cmath>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include "../spec.h"
#include "blas.h"

namespace ada_vtp::cpu {
namespace {

constexpr double kNormEps = spec::kNormEps;
// compared with fp32 distances in fp32, as the reference compares an fp32 tensor with a scalar
constexpr float kDistanceSnap = static_cast<float>(spec::kDistanceSnap);
// outside [kSafeMin, kSafeMax], fp32 squares could underflow or overflow
constexpr double kSafeMin = spec::kSafeMin;
constexpr double kSafeMax = spec::kSafeMax;

// max |x| over one image's rows, NaN-free input (validated): one pass at memory speed in
// branch-free chunks the compiler vectorises
double max_abs(const at::Tensor& x) {
  auto xc = x.contiguous();
  float largest = 0.0f;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "max_abs", [&] {
    const scalar_t* p = xc.data_ptr<scalar_t>();
    for (int64_t i = 0, n = xc.numel(); i < n; ++i) {
      const float a = std::fabs(static_cast<float>(p[i]));
      largest = largest < a ? a : largest;
    }
  });
  return largest;
}

}  // namespace

at::Tensor rescale(const at::Tensor& x) {
  auto out = at::empty(x.sizes(), x.options().dtype(at::kFloat));
  const double amax = max_abs(x);
  if (amax == 0.0 || (amax >= kSafeMin && amax <= kSafeMax)) return out.copy_(x);
  int exponent = 0;
  std::frexp(amax, &exponent);
  // 2^-e can leave float's range: scale in double and round once, as the reference does
  return out.copy_(at::mul(x.to(at::kDouble), std::ldexp(1.0, -exponent)));
}

double attention_entropy_one(const at::Tensor& scores) {
  const auto s = scores.to(at::kDouble).contiguous();
  const double* p = s.data_ptr<double>();
  const int64_t n = s.numel();
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) total += p[i];
  if (total == 0.0) return std::log(static_cast<double>(n));
  double h = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double q = p[i] / total;
    if (q > 0.0) h -= q * std::log(q);
  }
  return h;
}

double erank_one(const at::Tensor& xs) {
  // the smaller Gram: of the rows (X Xᵀ) or of the columns (Xᵀ X)
  const auto a = xs.size(0) <= xs.size(1) ? xs : xs.t().contiguous();
  auto sigma = blas::eigvalsh(blas::gram_lower_fp64(a)).clamp_min(0).sqrt();
  auto total = sigma.sum();
  if (total.item<double>() == 0.0) return 0.0;
  auto q = sigma / total;
  return at::exp(-at::xlogy(q, q).sum()).item<double>();
}

// fp64 dot products of fp32 rows [n, d] with v [d]: kLanes partial sums over k mod kLanes, added
// in a fixed order, so that each ISA's clone (the compiler vectorises the lanes) gives the same
// bits; 16 lanes keep four vector additions in flight.  Reads the fp32 rows: fp64 copies would
// double an on-demand row's memory traffic.
constexpr int kLanes = 16;

__attribute__((target_clones("avx512f", "avx2", "default")))
void dots_fp64(const float* rows, int64_t n, int64_t d, const float* v, double* out) {
  for (int64_t j = 0; j < n; ++j) {
    const float* r = rows + j * d;
    double lane[kLanes] = {};
    int64_t k = 0;
    for (; k + kLanes <= d; k += kLanes) {
      for (int l = 0; l < kLanes; ++l) lane[l] += static_cast<double>(r[k + l]) * static_cast<double>(v[k + l]);
    }
    double tail = 0.0;
    for (; k < d; ++k) tail += static_cast<double>(r[k]) * static_cast<double>(v[k]);
    for (int width = kLanes / 2; width > 0; width /= 2) {
      for (int l = 0; l < width; ++l) lane[l] += lane[l + width];
    }
    out[j] = lane[0] + tail;
  }
}

Distances::Distances(const at::Tensor& xs, bool full_gram, int64_t max_rows) : n_(xs.size(0)), xs_(xs) {
  denom_.resize(n_);
  tiny_.resize(n_);
  std::vector<double> squares(n_);
  for (int64_t i = 0; i < n_; ++i) {
    const float* row = xs_.data_ptr<float>() + i * xs_.size(1);
    dots_fp64(row, 1, xs_.size(1), row, &squares[i]);
    const double norm = std::sqrt(squares[i]);
    denom_[i] = std::max(norm, kNormEps);
    tiny_[i] = norm < kNormEps;
  }
  if (full_gram) {
    fill_full();
  } else {
    slot_.assign(n_, -1);
    rows_.resize(static_cast<size_t>(max_rows) * n_);
    dots_.resize(n_);
  }
}

float Distances::distance(double dot, int64_t i, int64_t j) const {
  // reference.cosine_distance, element for element: one rounding to fp32, then clamp and snap
  const float s = std::min(std::max(static_cast<float>(dot / (denom_[i] * denom_[j])), -1.0f), 1.0f);
  const float d = 1.0f - s;
  return d < kDistanceSnap ? 0.0f : d;
}

void Distances::fill_full() {
  full_ = at::empty({n_, n_}, xs_.options());
  float* out = full_.data_ptr<float>();
  const auto gram = blas::gram_lower_fp64(xs_);
  const double* g = gram.data_ptr<double>();
  // d is symmetric by construction: the lower triangle, mirrored
  at::parallel_for(0, n_, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      for (int64_t j = 0; j < i; ++j) out[i * n_ + j] = out[j * n_ + i] = distance(g[i * n_ + j], i, j);
      out[i * n_ + i] = self_distance(i);
    }
  });
}

const float* Distances::row(int64_t i) {
  if (full_.defined()) return full_.data_ptr<float>() + i * n_;
  if (slot_[i] >= 0) return rows_.data() + slot_[i] * n_;
  TORCH_CHECK(static_cast<size_t>((used_ + 1) * n_) <= rows_.size(), "ada_vtp: distance row cache overflow");
  const int64_t d = xs_.size(1);
  const float* x = xs_.data_ptr<float>();
  dots_fp64(x, n_, d, x + i * d, dots_.data());
  float* dst = rows_.data() + used_ * n_;
  for (int64_t j = 0; j < n_; ++j) dst[j] = distance(dots_[j], i, j);
  dst[i] = self_distance(i);
  slot_[i] = used_++;
  return dst;
}

}  // namespace ada_vtp::cpu
