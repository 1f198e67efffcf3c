#include "image.h"

#include <cmath>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

namespace ada_vtp::cpu {
namespace {

constexpr float kNormEps = 1e-6f;
constexpr float kDistanceSnap = 1e-6f;
// defaults.SAFE_MIN / SAFE_MAX: outside, fp32 squares could underflow or overflow
constexpr double kSafeMin = 0x1p-56;
constexpr double kSafeMax = 0x1p56;

}  // namespace

at::Tensor rescale(const at::Tensor& x, double amax) {
  if (amax == 0.0 || (amax >= kSafeMin && amax <= kSafeMax)) return x.to(at::kFloat).contiguous();
  int exponent = 0;
  std::frexp(amax, &exponent);
  // 2^-e can leave float's range: scale in double and round once, as the reference does
  return at::mul(x.to(at::kDouble), std::ldexp(1.0, -exponent)).to(at::kFloat).contiguous();
}

double attention_entropy_one(const at::Tensor& scores) {
  // the same ATen ops as reference.attention_entropy_one, so both round identically
  auto s = scores.to(at::kDouble);
  auto total = s.sum();
  if (total.item<double>() == 0.0) return std::log(static_cast<double>(s.numel()));
  auto p = s / total;
  return -at::xlogy(p, p).sum().item<double>();
}

// MKL's thread-local thread count, in its Fortran binding (a pointer argument), the name torch's
// x86 wheels export from the MKL they link statically (their C name is an alias of the same
// code there, so it cannot be called with an int).  Weak: with a torch built without MKL the
// pointer is null and the library still loads.
extern "C" int mkl_set_num_threads_local_(const int* threads) __attribute__((weak));

namespace {

// f() with MKL's LAPACK on one thread (this thread only), the previous count restored after.
template <typename F>
auto with_sequential_lapack(F f) {
  if (mkl_set_num_threads_local_ == nullptr) return f();
  static constexpr int kOne = 1;
  struct Restore {
    int before;
    ~Restore() { mkl_set_num_threads_local_(&before); }
  } restore{mkl_set_num_threads_local_(&kOne)};
  return f();
}

}  // namespace

at::Tensor eigvalsh_sequential(const at::Tensor& a) {
  return with_sequential_lapack([&] { return at::linalg_eigvalsh(a); });
}

std::tuple<at::Tensor, at::Tensor> eigh_sequential(const at::Tensor& a) {
  return with_sequential_lapack([&] { return at::linalg_eigh(a); });
}

double erank_one(const at::Tensor& xs) {
  auto x = xs.to(at::kDouble);
  auto gram = x.size(0) <= x.size(1) ? at::mm(x, x.t()) : at::mm(x.t(), x);
  auto sigma = eigvalsh_sequential(gram).clamp_min(0).sqrt();
  auto total = sigma.sum();
  if (total.item<double>() == 0.0) return 0.0;
  auto q = sigma / total;
  return at::exp(-at::xlogy(q, q).sum()).item<double>();
}

Distances::Distances(const at::Tensor& xs, bool full_gram, int64_t max_rows) : n_(xs.size(0)) {
  auto norms = at::linalg_vector_norm(xs, 2, {-1});
  xn_ = (xs / norms.clamp_min(kNormEps).unsqueeze(1)).contiguous();
  tiny_.resize(n_);
  const float* nrm = norms.data_ptr<float>();
  for (int64_t i = 0; i < n_; ++i) tiny_[i] = nrm[i] < kNormEps;
  if (full_gram) {
    full_ = at::mm(xn_, xn_.t()).contiguous();
    float* d = full_.data_ptr<float>();
    for (int64_t i = 0; i < n_; ++i) snap_row(d + i * n_, i);
  } else {
    slot_.assign(n_, -1);
    rows_.resize(static_cast<size_t>(max_rows) * n_);
  }
}

void Distances::snap_row(float* row, int64_t i) const {
  // similarities in, snapped distances out (reference.cosine_distance, element for element)
  for (int64_t j = 0; j < n_; ++j) {
    float s = std::min(std::max(row[j], -1.0f), 1.0f);
    float d = 1.0f - s;
    row[j] = d < kDistanceSnap ? 0.0f : d;
  }
  row[i] = self_distance(i);
}

const float* Distances::row(int64_t i) {
  if (full_.defined()) return full_.data_ptr<float>() + i * n_;
  if (slot_[i] >= 0) return rows_.data() + slot_[i] * n_;
  TORCH_CHECK(static_cast<size_t>((used_ + 1) * n_) <= rows_.size(), "ada_vtp: distance row cache overflow");
  float* dst = rows_.data() + used_ * n_;
  auto out = at::from_blob(dst, {n_}, at::TensorOptions().dtype(at::kFloat));
  at::mv_out(out, xn_, xn_[i]);
  snap_row(dst, i);
  slot_[i] = used_++;
  return dst;
}

}  // namespace ada_vtp::cpu
