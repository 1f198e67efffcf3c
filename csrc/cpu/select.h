// The greedy selection methods of DESIGN.md for one image (n valid tokens).  Each returns k
// token indices in selection order; the caller sorts them.  kernels/prune/reference.py is the specification.
#pragma once

#include <cstdint>
#include <vector>

#include "image.h"

namespace ada_vtp::cpu {

// Token indices by descending score, equal scores by ascending index (stable).
std::vector<int64_t> score_order(const float* scores, int64_t n);

std::vector<int64_t> select_maxmin(Distances& dist, int64_t k, std::vector<int64_t> selected);
std::vector<int64_t> select_dpp(Distances& dist, const float* relevance, int64_t k);
std::vector<int64_t> select_vispruner(Distances& dist, const std::vector<int64_t>& order, int64_t k,
                                      int64_t k_imp);
std::vector<int64_t> select_agile(Distances& dist, const std::vector<int64_t>& order, int64_t k,
                                  double complexity, double tau_scale, double tau_max);

}  // namespace ada_vtp::cpu
