#include "select.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "../spec.h"

namespace ada_vtp::cpu {
namespace {

constexpr double kDppStop = spec::kDppStop;
constexpr int64_t kVisPrunerRound = spec::kVisprunerRound;
constexpr float kInfF = std::numeric_limits<float>::infinity();

}  // namespace

std::vector<int64_t> score_order(const float* scores, int64_t n) {
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [scores](int64_t a, int64_t b) { return scores[a] > scores[b]; });
  return order;
}

std::vector<int64_t> select_maxmin(Distances& dist, int64_t k, std::vector<int64_t> selected) {
  const int64_t n = dist.size();
  if (static_cast<int64_t>(selected.size()) >= k) return selected;
  if (selected.empty()) {
    // first pick: the token whose nearest other token is farthest (needs every row)
    int64_t first = 0;
    float best = -kInfF;
    for (int64_t i = 0; i < n && n > 1; ++i) {
      const float* row = dist.row(i);
      float nearest = kInfF;
      for (int64_t j = 0; j < n; ++j) {
        if (j != i) nearest = std::min(nearest, row[j]);
      }
      if (nearest > best) {
        best = nearest;
        first = i;
      }
    }
    selected.push_back(first);
  }
  std::vector<float> min_dist(n, kInfF);
  std::vector<uint8_t> taken(n, 0);
  for (int64_t s : selected) {
    const float* row = dist.row(s);
    for (int64_t j = 0; j < n; ++j) min_dist[j] = std::min(min_dist[j], row[j]);
    taken[s] = 1;
  }
  while (static_cast<int64_t>(selected.size()) < k) {
    int64_t pick = -1;
    float best = -kInfF;
    for (int64_t j = 0; j < n; ++j) {
      if (!taken[j] && (pick < 0 || min_dist[j] > best)) {
        best = min_dist[j];
        pick = j;
      }
    }
    selected.push_back(pick);
    taken[pick] = 1;
    if (static_cast<int64_t>(selected.size()) == k) break;  // the last pick's row is never read
    const float* row = dist.row(pick);
    for (int64_t j = 0; j < n; ++j) min_dist[j] = std::min(min_dist[j], row[j]);
  }
  return selected;
}

std::vector<int64_t> select_dpp(Distances& dist, const float* relevance, int64_t k) {
  // fp64 greedy MAP (Chen et al. 2018); every product and difference is rounded separately
  // (built with -ffp-contract=off), as reference.select_dpp does with tensor ops
  const int64_t n = dist.size();
  std::vector<double> r(relevance, relevance + n);
  std::vector<double> d2(n);
  for (int64_t i = 0; i < n; ++i) {
    const double s = static_cast<double>(1.0f - dist.self_distance(i));
    d2[i] = (r[i] * s) * r[i];
  }
  const double stop = kDppStop * *std::max_element(d2.begin(), d2.end());
  std::vector<double> c(static_cast<size_t>(k) * n, 0.0);
  std::vector<double> e(n);
  std::vector<uint8_t> taken(n, 0);
  std::vector<int64_t> selected;
  for (int64_t t = 0; t < k; ++t) {
    int64_t j = -1;
    for (int64_t i = 0; i < n; ++i) {
      if (!taken[i] && (j < 0 || d2[i] > d2[j])) j = i;
    }
    if (d2[j] <= stop) {
      // the kernel's rank is spent: the rest by relevance
      for (int64_t i : score_order(relevance, n)) {
        if (static_cast<int64_t>(selected.size()) == k) break;
        if (!taken[i]) selected.push_back(i);
      }
      return selected;
    }
    const float* row = dist.row(j);
    for (int64_t i = 0; i < n; ++i) {
      const double s = static_cast<double>(1.0f - row[i]);
      e[i] = (r[j] * s) * r[i];
    }
    for (int64_t s = 0; s < t; ++s) {
      const double* cs = c.data() + s * n;
      const double csj = cs[j];
      for (int64_t i = 0; i < n; ++i) e[i] = e[i] - csj * cs[i];
    }
    const double norm = std::sqrt(d2[j]);
    double* ct = c.data() + t * n;
    for (int64_t i = 0; i < n; ++i) {
      ct[i] = e[i] / norm;
      d2[i] = d2[i] - ct[i] * ct[i];
    }
    selected.push_back(j);
    taken[j] = 1;
  }
  return selected;
}

std::vector<int64_t> select_vispruner(Distances& dist, const std::vector<int64_t>& order, int64_t k,
                                      int64_t k_imp) {
  const int64_t target = k - k_imp;
  std::vector<int64_t> selected(order.begin(), order.begin() + k_imp);
  std::vector<int64_t> rest(order.begin() + k_imp, order.end());
  std::vector<int64_t> a, b, by_similarity, next;
  std::vector<float> s_a;
  while (static_cast<int64_t>(rest.size()) > target) {
    const int64_t r = std::min<int64_t>(kVisPrunerRound, static_cast<int64_t>(rest.size()) - target);
    a.clear();
    b.clear();
    for (size_t i = 0; i < rest.size(); ++i) (i % 2 ? b : a).push_back(rest[i]);
    s_a.assign(a.size(), -kInfF);
    for (size_t i = 0; i < a.size(); ++i) {
      const float* row = dist.row(a[i]);
      for (int64_t tok : b) s_a[i] = std::max(s_a[i], 1.0f - row[tok]);
    }
    by_similarity.resize(a.size());
    std::iota(by_similarity.begin(), by_similarity.end(), 0);
    std::stable_sort(by_similarity.begin(), by_similarity.end(),
                     [&s_a](int64_t x, int64_t y) { return s_a[x] > s_a[y]; });
    next.clear();
    const size_t drop = std::min<size_t>(static_cast<size_t>(r), a.size());
    for (size_t i = drop; i < a.size(); ++i) next.push_back(a[by_similarity[i]]);
    next.insert(next.end(), b.begin(), b.end());
    rest.swap(next);
  }
  selected.insert(selected.end(), rest.begin(), rest.end());
  return selected;
}

std::vector<int64_t> select_agile(Distances& dist, const std::vector<int64_t>& order, int64_t k,
                                  double complexity, double tau_scale, double tau_max) {
  const int64_t n = dist.size();
  std::vector<uint8_t> suppressed(n, 0);
  std::vector<int64_t> selected;
  int64_t rank = 0;
  for (int64_t i : order) {
    ++rank;
    if (static_cast<int64_t>(selected.size()) == k) break;
    if (suppressed[i]) continue;
    selected.push_back(i);
    if (static_cast<int64_t>(selected.size()) == k) break;  // nothing left to suppress for
    const double tau = std::min(static_cast<double>(rank) * complexity * tau_scale, tau_max);
    const float* row = dist.row(i);
    for (int64_t j = 0; j < n; ++j) suppressed[j] |= static_cast<double>(row[j]) < tau;
  }
  return select_maxmin(dist, k, std::move(selected));
}

}  // namespace ada_vtp::cpu
