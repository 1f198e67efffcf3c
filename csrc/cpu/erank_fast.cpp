#include "erank_fast.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "../spec.h"
#include "blas.h"
#include "image.h"

namespace ada_vtp::cpu {
namespace {

// defaults.FAST_ERANK_*, reference.ORTH_DROP
constexpr int64_t kBlock = spec::kFastErankBlock;
constexpr int64_t kLargeBlock = spec::kFastErankLargeBlock;
constexpr int64_t kLargeAbove = spec::kFastErankLargeAbove;
constexpr int64_t kPowerSteps = spec::kFastErankPowerSteps;
constexpr int64_t kProbes = spec::kFastErankProbes;
constexpr int64_t kSteps = spec::kFastErankLanczosSteps;
constexpr double kOrthDrop = spec::kFastErankOrthDrop;

uint32_t lowbias32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

// reference.probe_signs, transposed: [cols, m] fp32, row c = probe c
at::Tensor probe_rows(int64_t m, int64_t cols, uint32_t stream) {
  auto out = at::empty({cols, m}, at::TensorOptions().dtype(at::kFloat));
  float* p = out.data_ptr<float>();
  for (int64_t c = 0; c < cols; ++c) {
    for (int64_t i = 0; i < m; ++i) {
      const uint32_t key = static_cast<uint32_t>(i * 1024 + c) + stream * 0x9E3779B9u;
      p[c * m + i] = (lowbias32(key) & 1u) ? -1.0f : 1.0f;
    }
  }
  return out;
}

// fp32 dot product in 8 independent lanes (vectorisable without reassociating one sum), flushed
// into an fp64 total every kChunk elements: one fp32 sum over millions of squares (the trace of a
// 2880 x 4096 image) drifts by about length x 6e-8, which once cost 6 % of an erank.
double dot(const float* a, const float* b, int64_t m) {
  constexpr int64_t kChunk = 1024;
  double total = 0.0;
  int64_t i = 0;
  while (m - i >= 8) {
    float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    const int64_t end = i + std::min(kChunk, (m - i) / 8 * 8);
    for (; i < end; i += 8) {
      for (int l = 0; l < 8; ++l) lane[l] += a[i + l] * b[i + l];
    }
    for (int l = 0; l < 8; ++l) total += lane[l];
  }
  for (; i < m; ++i) total += static_cast<double>(a[i]) * b[i];
  return total;
}

// T [c, c] fp64, lower triangular, with T Y orthonormal rows, Y's Gram [c, c] fp64 given: T = L⁻¹,
// Y Yᵀ = L Lᵀ.  T Y is Gram-Schmidt in exact arithmetic, and the Cholesky pivot of row j is the
// squared norm it keeps after projection on the earlier rows, so reference._orthonormalize's drop
// rule applies to it: a dropped row gets a zero row of T.
at::Tensor inverse_cholesky(const at::Tensor& gram) {
  const int64_t c = gram.size(0);
  const auto g = gram.accessor<double, 2>();
  std::vector<double> l(c * c, 0.0);
  std::vector<uint8_t> kept(c, 0);
  for (int64_t j = 0; j < c; ++j) {
    double* lj = l.data() + j * c;
    for (int64_t i = 0; i < j; ++i) {
      if (!kept[i]) continue;
      const double* li = l.data() + i * c;
      double s = g[j][i];
      for (int64_t t = 0; t < i; ++t) s -= lj[t] * li[t];
      lj[i] = s / li[i];
    }
    double residual = g[j][j];
    for (int64_t t = 0; t < j; ++t) residual -= lj[t] * lj[t];
    if (residual > kOrthDrop * kOrthDrop * g[j][j]) {
      lj[j] = std::sqrt(residual);
      kept[j] = 1;
    } else {
      std::fill(lj, lj + j, 0.0);
    }
  }
  auto inverse = at::zeros({c, c}, gram.options());
  auto t = inverse.accessor<double, 2>();
  for (int64_t j = 0; j < c; ++j) {
    if (!kept[j]) continue;
    const double* lj = l.data() + j * c;
    for (int64_t i = 0; i < j; ++i) {
      double s = 0.0;
      for (int64_t k = i; k < j; ++k) s += lj[k] * t[k][i];
      t[j][i] = -s / lj[j];
    }
    t[j][j] = 1.0 / lj[j];
  }
  return inverse;
}

// reference._orthonormalize on rows, in place, as Cholesky QR applied twice: matrix products and
// a c x c factorisation instead of a loop over rows (measured: a third of the estimator's time).
// The first Gram is fp64, since the drop test compares a pivot with 1e-10 of a squared norm; the
// second, of rows already orthonormal to about cond(Y)**2 * 1e-16 <= 1e-6, needs only fp32.  As
// with fp32 Gram-Schmidt, a row that keeps little of its norm is only as accurate as fp32 allows.
void orthonormalize_rows(at::Tensor& y) {
  const auto rows64 = y.to(at::kDouble);
  y.copy_(blas::mm(inverse_cholesky(blas::mm(rows64, rows64.t())).to(at::kFloat), y));
  y.copy_(blas::mm(inverse_cholesky(blas::mm(y, y.t()).to(at::kDouble)).to(at::kFloat), y));
}

// rows of `out` [c, m] = rows of y [c, m] / their norms (a zero row where the norm is 0); returns
// the norms (fp64).  Squares and scaling in fp64: a Lanczos vector of an exactly low-rank image
// can shrink to 1e-30, whose fp32 squares underflow, and a norm computed from what is left made
// a "unit" vector of norm 1e7 (T then overflowed and the eigensolver failed on NaN).
std::vector<double> normalize_rows(const at::Tensor& y, at::Tensor out) {
  const int64_t m = y.size(1);
  std::vector<double> norm(y.size(0));
  for (int64_t c = 0; c < y.size(0); ++c) {
    const float* src = y.data_ptr<float>() + c * m;
    double squares = 0.0;
    for (int64_t t = 0; t < m; ++t) squares += static_cast<double>(src[t]) * src[t];
    norm[c] = std::sqrt(squares);
    const double inv = norm[c] > 0.0 ? 1.0 / norm[c] : 0.0;
    float* dst = out.data_ptr<float>() + c * m;
    for (int64_t t = 0; t < m; ++t) dst[t] = static_cast<float>(src[t] * inv);
  }
  return norm;
}

// Fraction of ||X||_F**2 below which the remainder's trace is computed as ||X - B Qᵀ||_F**2
// rather than as ||X||_F**2 - ||B||_F**2: the difference of fp32-accurate sums loses about
// 1e-7 of ||X||_F**2, which is at most 1e-4 of a remainder this large, and a product with X less.
constexpr double kTraceBySubtraction = 1e-3;

// Sum of squares of a contiguous fp32 tensor, in fp64: fixed chunks summed in parallel, then in
// order, so that the result does not depend on the thread count.
double squared_norm(const at::Tensor& t) {
  constexpr int64_t kChunk = 1 << 16;
  const float* p = t.data_ptr<float>();
  const int64_t len = t.numel(), chunks = (len + kChunk - 1) / kChunk;
  std::vector<double> partial(chunks);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const int64_t start = c * kChunk;
      partial[c] = dot(p + start, p + start, std::min(kChunk, len - start));
    }
  });
  double total = 0.0;
  for (double v : partial) total += v;
  return total;
}

// tr(P G P) = ||a P||_F**2 of the remainder; B = a Q as rows [k, rows], Q rows [k, m]
double remainder_trace(const at::Tensor& xs, const at::Tensor& q, const at::Tensor& b, bool tokens) {
  const double total = squared_norm(xs);
  const double kept = squared_norm(b);
  if (total - kept >= kTraceBySubtraction * total) return total - kept;
  auto residual = (tokens ? xs.t() : xs).clone(at::MemoryFormat::Contiguous);  // a [rows, m]
  blas::addmm_(residual, b.t(), q, 1, -1);
  return squared_norm(residual);
}

// reference._control_line: a + b lam fitted to f on the nodes, weighted by w
void control_line(const std::vector<double>& lam, const std::vector<double>& w, const std::vector<double>& f,
                  double& a, double& b) {
  double scale = 0.0, weight = 0.0, g0 = 0.0;
  for (size_t i = 0; i < lam.size(); ++i) {
    scale = std::max(scale, lam[i]);
    weight += w[i];
    g0 += w[i] * f[i];
  }
  a = g0 / weight;
  b = 0.0;
  if (scale <= 0.0) return;
  double s1 = 0.0, s2 = 0.0, g1 = 0.0;
  for (size_t i = 0; i < lam.size(); ++i) {
    const double t = lam[i] / scale;
    s1 += w[i] * t;
    s2 += w[i] * t * t;
    g1 += w[i] * t * f[i];
  }
  const double det = weight * s2 - s1 * s1;
  if (det <= 1e-12 * weight * s2) return;
  a = (s2 * g0 - s1 * g1) / det;
  b = (weight * g1 - s1 * g0) / det / scale;
}

double sigma_log(double sigma) { return sigma > 0.0 ? sigma * std::log(sigma) : 0.0; }

}  // namespace

double erank_fast_one(const at::Tensor& xs) {
  const int64_t n = xs.size(0), d = xs.size(1);
  const bool tokens = n < d;  // G = X Xᵀ (probes over tokens) or Xᵀ X (over channels)
  const int64_t m = tokens ? n : d;
  // rows of V [c, m] -> rows of (a V)ᵀ [c, rows] -> rows of (aᵀ a V)ᵀ [c, m], a = X or Xᵀ
  auto apply_a = [&](const at::Tensor& v) { return tokens ? blas::mm(v, xs) : blas::mm(v, xs.t()); };
  auto apply_at = [&](const at::Tensor& u) { return tokens ? blas::mm(u, xs.t()) : blas::mm(u, xs); };

  if (m <= kBlock) return erank_one(xs);
  const int64_t block = m > kLargeAbove ? kLargeBlock : kBlock;  // reference.fast_erank_block
  auto q = probe_rows(m, block, 0);
  for (int64_t step = 0; step < kPowerSteps; ++step) {
    auto u = apply_a(q).contiguous();
    orthonormalize_rows(u);
    q = apply_at(u).contiguous();
    orthonormalize_rows(q);
  }
  auto b = apply_a(q);  // [k, rows]
  auto b64 = b.to(at::kDouble);
  auto theta = blas::eigvalsh(blas::mm(b64, b64.t())).clamp_min(0);
  double total = 0.0, total_log = 0.0;
  const double* theta_p = theta.data_ptr<double>();
  for (int64_t i = 0; i < theta.size(0); ++i) {
    const double sigma = std::sqrt(theta_p[i]);
    total += sigma;
    total_log += sigma_log(sigma);
  }

  int64_t rank_q = 0;
  for (int64_t i = 0; i < block; ++i) {
    const float* row = q.data_ptr<float>() + i * m;
    rank_q += std::any_of(row, row + m, [](float v) { return v != 0.0f; });
  }
  const double dimension = static_cast<double>(m - rank_q);
  const double trace = remainder_trace(xs, q, b, tokens);
  if (dimension > 0) {
    // the probes' Lanczos recurrences side by side: basis_at(j, c), m floats, is probe c's vector j
    auto basis = at::empty({kSteps, kProbes, m}, xs.options());
    auto basis_at = [&, base = basis.data_ptr<float>()](int64_t i, int64_t c) { return base + (i * kProbes + c) * m; };
    auto z = probe_rows(m, kProbes, 1);
    for (int pass = 0; pass < 2; ++pass) blas::addmm_(z, blas::mm(z, q.t()), q, 1, -1);
    const std::vector<double> beta0 = normalize_rows(z, basis[0]);
    auto alpha = at::zeros({kSteps, kProbes}, at::TensorOptions().dtype(at::kDouble));
    auto beta = at::zeros({kSteps, kProbes}, at::TensorOptions().dtype(at::kDouble));
    auto al = alpha.accessor<double, 2>();
    auto be = beta.accessor<double, 2>();
    for (int64_t j = 0; j < kSteps; ++j) {
      const auto v = basis[j];
      const auto av = apply_a(v).contiguous();  // [p, rows]
      const int64_t rows = av.size(1);
      for (int64_t c = 0; c < kProbes; ++c) {
        al[j][c] = dot(av.data_ptr<float>() + c * rows, av.data_ptr<float>() + c * rows, rows);
      }
      if (j == kSteps - 1) break;
      auto w = apply_at(av).contiguous();  // [p, m]
      float* wp = w.data_ptr<float>();
      for (int64_t c = 0; c < kProbes; ++c) {
        const float ca = static_cast<float>(al[j][c]);
        const float cb = j > 0 ? static_cast<float>(be[j - 1][c]) : 0.0f;
        const float* vj = basis_at(j, c);
        const float* vp = j > 0 ? basis_at(j - 1, c) : vj;
        float* wc = wp + c * m;
        for (int64_t t = 0; t < m; ++t) wc[t] -= ca * vj[t] + cb * vp[t];
      }
      // full reorthogonalisation, twice: against Q, then against the probe's earlier vectors
      for (int pass = 0; pass < 2; ++pass) {
        blas::addmm_(w, blas::mm(w, q.t()), q, 1, -1);
        for (int64_t c = 0; c < kProbes; ++c) {
          float* wc = wp + c * m;
          for (int64_t i = 0; i <= j; ++i) {
            const float* vi = basis_at(i, c);
            const float coef = static_cast<float>(dot(vi, wc, m));
            for (int64_t t = 0; t < m; ++t) wc[t] -= coef * vi[t];
          }
        }
      }
      const std::vector<double> norm = normalize_rows(w, basis[j + 1]);
      for (int64_t c = 0; c < kProbes; ++c) be[j][c] = norm[c];
    }
    // Gauss (kSteps - 1 nodes) and anti-Gauss (kSteps nodes) rules of every probe
    std::vector<double> lam, weight;
    for (int64_t nodes = kSteps - 1; nodes <= kSteps; ++nodes) {
      const bool anti = nodes == kSteps;
      auto t = at::zeros({kProbes, nodes, nodes}, at::TensorOptions().dtype(at::kDouble));
      auto acc = t.accessor<double, 3>();
      for (int64_t c = 0; c < kProbes; ++c) {
        for (int64_t i = 0; i < nodes; ++i) acc[c][i][i] = al[i][c];
        for (int64_t i = 0; i + 1 < nodes; ++i) {
          const double off = be[i][c] * (anti && i == nodes - 2 ? std::sqrt(2.0) : 1.0);
          acc[c][i][i + 1] = acc[c][i + 1][i] = off;
        }
      }
      auto [theta_t, vectors] = blas::eigh(t);
      auto th = theta_t.accessor<double, 2>();
      auto ve = vectors.accessor<double, 3>();
      for (int64_t c = 0; c < kProbes; ++c) {
        const double b0 = beta0[c];
        for (int64_t i = 0; i < nodes; ++i) {
          lam.push_back(std::max(th[c][i], 0.0));
          weight.push_back(ve[c][0][i] * ve[c][0][i] * b0 * b0 / (2.0 * kProbes));
        }
      }
    }
    std::vector<double> f_sigma(lam.size()), f_log(lam.size());
    double est_dimension = 0.0, est_trace = 0.0, s_sigma = 0.0, s_log = 0.0;
    for (size_t i = 0; i < lam.size(); ++i) {
      f_sigma[i] = std::sqrt(lam[i]);
      f_log[i] = sigma_log(f_sigma[i]);
      est_dimension += weight[i];
      est_trace += weight[i] * lam[i];
      s_sigma += weight[i] * f_sigma[i];
      s_log += weight[i] * f_log[i];
    }
    double a0 = 0.0, a1 = 0.0;
    control_line(lam, weight, f_sigma, a0, a1);
    total += s_sigma + a0 * (dimension - est_dimension) + a1 * (trace - est_trace);
    control_line(lam, weight, f_log, a0, a1);
    total_log += s_log + a0 * (dimension - est_dimension) + a1 * (trace - est_trace);
  }
  if (total <= 0.0) return 0.0;
  return std::min(std::max(std::exp(std::log(total) - total_log / total), 1.0), static_cast<double>(m));
}

}  // namespace ada_vtp::cpu
