#include "erank_fast.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <ATen/ATen.h>

#include "image.h"

namespace ada_vtp::cpu {
namespace {

// defaults.FAST_ERANK_*, reference.ORTH_DROP
constexpr int64_t kBlock = 64;
constexpr int kPowerSteps = 2;
constexpr int64_t kProbes = 8;
constexpr int64_t kSteps = 8;
constexpr double kOrthDrop = 1e-5;

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

// fp32 dot product in 8 independent lanes (vectorisable without reassociating one sum), fp64 total
double dot(const float* a, const float* b, int64_t m) {
  float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= m; i += 8) {
    for (int l = 0; l < 8; ++l) lane[l] += a[i + l] * b[i + l];
  }
  double total = 0.0;
  for (int l = 0; l < 8; ++l) total += lane[l];
  for (; i < m; ++i) total += static_cast<double>(a[i]) * b[i];
  return total;
}

// reference._orthonormalize on rows, in place: classical Gram-Schmidt twice.  The projection
// on the rows of earlier blocks is two matrix products per pass, the rest row by row; the same
// projections as the reference's row-by-row loop, in another rounding order.
void orthonormalize_rows(at::Tensor& y) {
  constexpr int64_t kPanel = 16;
  const int64_t c = y.size(0), m = y.size(1);
  float* rows = y.data_ptr<float>();
  std::vector<double> norm_y(c), coef(c);
  for (int64_t j = 0; j < c; ++j) norm_y[j] = std::sqrt(dot(rows + j * m, rows + j * m, m));
  for (int64_t start = 0; start < c; start += kPanel) {
    const int64_t end = std::min(start + kPanel, c);
    auto panel = y.narrow(0, start, end - start);
    if (start > 0) {
      auto done = y.narrow(0, 0, start);
      for (int pass = 0; pass < 2; ++pass) panel.sub_(at::mm(at::mm(panel, done.t()), done));
    }
    for (int64_t j = start; j < end; ++j) {
      float* w = rows + j * m;
      for (int pass = 0; pass < 2; ++pass) {
        for (int64_t i = start; i < j; ++i) coef[i] = dot(rows + i * m, w, m);
        for (int64_t i = start; i < j; ++i) {
          const float ci = static_cast<float>(coef[i]);
          const float* qi = rows + i * m;
          for (int64_t t = 0; t < m; ++t) w[t] -= ci * qi[t];
        }
      }
      const double norm = std::sqrt(dot(w, w, m));
      const float inv = norm > kOrthDrop * norm_y[j] ? static_cast<float>(1.0 / norm) : 0.0f;
      for (int64_t t = 0; t < m; ++t) w[t] *= inv;
    }
  }
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
  auto apply_a = [&](const at::Tensor& v) { return tokens ? at::mm(v, xs) : at::mm(v, xs.t()); };
  auto apply_at = [&](const at::Tensor& u) { return tokens ? at::mm(u, xs.t()) : at::mm(u, xs); };

  if (m <= kBlock) return erank_one(xs);
  auto q = probe_rows(m, kBlock, 0);
  for (int step = 0; step < kPowerSteps; ++step) {
    q = apply_at(apply_a(q)).contiguous();
    orthonormalize_rows(q);
  }
  auto b = apply_a(q);  // [k, rows]
  auto b64 = b.to(at::kDouble);
  auto theta = at::linalg_eigvalsh(at::mm(b64, b64.t())).clamp_min(0);
  double total = 0.0, total_log = 0.0;
  const double* theta_p = theta.data_ptr<double>();
  for (int64_t i = 0; i < theta.size(0); ++i) {
    const double sigma = std::sqrt(theta_p[i]);
    total += sigma;
    total_log += sigma_log(sigma);
  }

  int64_t rank_q = 0;
  for (int64_t i = 0; i < kBlock; ++i) {
    const float* row = q.data_ptr<float>() + i * m;
    rank_q += std::any_of(row, row + m, [](float v) { return v != 0.0f; });
  }
  const at::Tensor a = tokens ? xs.t() : xs;  // [rows, m]
  const double dimension = static_cast<double>(m - rank_q);
  const auto residual = at::addmm(a, b.t(), q, 1, -1).contiguous();
  const double trace = dot(residual.data_ptr<float>(), residual.data_ptr<float>(), residual.numel());
  if (dimension > 0) {
    auto z = probe_rows(m, kProbes, 1);
    for (int pass = 0; pass < 2; ++pass) z = z - at::mm(at::mm(z, q.t()), q);
    auto beta0 = at::linalg_vector_norm(z.to(at::kDouble), 2, {1});
    auto floor = std::numeric_limits<double>::min();
    std::vector<at::Tensor> basis{(z.to(at::kDouble) / beta0.clamp_min(floor).unsqueeze(1)).to(at::kFloat)};
    auto alpha = at::zeros({kSteps, kProbes}, at::TensorOptions().dtype(at::kDouble));
    auto beta = at::zeros({kSteps, kProbes}, at::TensorOptions().dtype(at::kDouble));
    for (int64_t j = 0; j < kSteps; ++j) {
      auto av = apply_a(basis[j]);
      alpha[j] = av.to(at::kDouble).square().sum(1);
      if (j == kSteps - 1) break;
      auto w = apply_at(av) - alpha[j].to(at::kFloat).unsqueeze(1) * basis[j];
      if (j > 0) w = w - beta[j - 1].to(at::kFloat).unsqueeze(1) * basis[j - 1];
      auto previous = at::stack(basis);  // [j + 1, p, m]
      for (int pass = 0; pass < 2; ++pass) {
        w = w - at::mm(at::mm(w, q.t()), q);
        w = w - (previous * (previous * w).sum(2, true)).sum(0);
      }
      auto norm = at::linalg_vector_norm(w.to(at::kDouble), 2, {1});
      beta[j] = norm;
      basis.push_back((w.to(at::kDouble) / norm.clamp_min(floor).unsqueeze(1)).to(at::kFloat));
    }
    // Gauss (kSteps - 1 nodes) and anti-Gauss (kSteps nodes) rules of every probe
    std::vector<double> lam, weight;
    for (int64_t nodes = kSteps - 1; nodes <= kSteps; ++nodes) {
      const bool anti = nodes == kSteps;
      auto t = at::zeros({kProbes, nodes, nodes}, at::TensorOptions().dtype(at::kDouble));
      auto acc = t.accessor<double, 3>();
      auto al = alpha.accessor<double, 2>();
      auto be = beta.accessor<double, 2>();
      for (int64_t c = 0; c < kProbes; ++c) {
        for (int64_t i = 0; i < nodes; ++i) acc[c][i][i] = al[i][c];
        for (int64_t i = 0; i + 1 < nodes; ++i) {
          const double off = be[i][c] * (anti && i == nodes - 2 ? std::sqrt(2.0) : 1.0);
          acc[c][i][i + 1] = acc[c][i + 1][i] = off;
        }
      }
      auto [theta_t, vectors] = at::linalg_eigh(t);
      auto th = theta_t.accessor<double, 2>();
      auto ve = vectors.accessor<double, 3>();
      for (int64_t c = 0; c < kProbes; ++c) {
        const double b0 = beta0.data_ptr<double>()[c];
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
