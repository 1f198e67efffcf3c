// CPU kernels of the ada_vtp ops (the stages of ada_vtp_kernels/ops.py's pipeline): one task per
// image (at::parallel_for over the batch).  Inputs arrive validated; TORCH_CHECK guards only the
// kernels' own invariants.  Every entry detaches its inputs first: the autograd fallthrough skips
// the Autograd key for the op itself only, and the ATen ops below must not record (or reject, as
// out= products do) inputs that require grad, on this thread or the workers.
#include <cmath>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "../ops.h"
#include "../spec.h"
#include "erank_fast.h"
#include "parallel.h"
#include "image.h"
#include "select.h"

namespace ada_vtp {
namespace {

using cpu::Distances;
using spec::Selection;

// K rows of fp64 dot products cost about what the fp64 Gram's triangle costs at 8 K = n
// (measured on 2 EPYC cores, one 576 x 1024 image: dpp with 64 rows 7.2 ms, divprune with the
// triangle 7.4 ms), so beyond that the Gram serves the rows.
constexpr int64_t kRowVsGramCost = 8;

double erank_of(const at::Tensor& xs, int64_t method) {
  return static_cast<spec::ErankMethod>(method) == spec::ErankMethod::kFast ? cpu::erank_fast_one(xs)
                                                                             : cpu::erank_one(xs);
}

void check_lengths(const at::Tensor& lengths, int64_t batch) {
  TORCH_CHECK(lengths.scalar_type() == at::kLong && lengths.dim() == 1 && lengths.size(0) == batch &&
                  lengths.is_contiguous(),
              "ada_vtp_cpu: lengths must be contiguous int64 [B]");
}

// The k selected tokens of one image (any order).  order: its n valid tokens in visit order.
std::vector<int64_t> select_one(const SelectParams& p, const at::Tensor& features, const int64_t* order, int64_t n,
                                int64_t count, double complexity, const float* relevance) {
  const int64_t k = p.keep;
  const auto selection = static_cast<Selection>(p.selection);
  std::vector<int64_t> visit(order, order + n);
  if (selection == Selection::kTopk || count >= k) return {visit.begin(), visit.begin() + k};
  const bool rows_cheaper = kRowVsGramCost * k < n;
  const auto xs = cpu::rescale(features);
  switch (selection) {
    case Selection::kMaxmin: {
      // with no token from the order the first pick compares all pairs
      Distances dist(xs, count == 0 || !rows_cheaper, k);
      return cpu::select_maxmin(dist, k, {visit.begin(), visit.begin() + count});
    }
    case Selection::kDpp: {
      Distances dist(xs, !rows_cheaper, k);
      std::vector<float> ones;
      if (relevance == nullptr) {
        ones.assign(n, 1.0f);
        relevance = ones.data();
      }
      return cpu::select_dpp(dist, relevance, k);
    }
    case Selection::kVispruner: {
      Distances dist(xs, /*full_gram=*/true, 0);
      return cpu::select_vispruner(dist, visit, k, count);
    }
    case Selection::kAgile: {
      Distances dist(xs, !rows_cheaper, k);
      return cpu::select_agile(dist, visit, k, complexity, p.tau_scale, p.tau_max);
    }
    default:
      TORCH_CHECK(false, "ada_vtp_cpu: unknown selection ", p.selection);
  }
}

}  // namespace

at::Tensor erank_cpu(const at::Tensor& features_in, const at::Tensor& lengths, int64_t method) {
  const auto features = features_in.detach();
  const int64_t batch = features.size(0);
  check_lengths(lengths, batch);
  const int64_t* len = lengths.data_ptr<int64_t>();
  auto out = at::empty({batch}, features.options().dtype(at::kDouble));
  double* o = out.data_ptr<double>();
  // "fast" is a sequence of matrix products, each parallel itself, and "exact" one eigensolver:
  // with fewer images than threads, "fast" runs image after image so that its products get every
  // thread (inside a parallel_for they would run on one)
  const bool by_image = static_cast<spec::ErankMethod>(method) == spec::ErankMethod::kFast &&
                        batch < at::get_num_threads();
  cpu::parallel_for_with_state(0, batch, by_image ? batch : 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) o[b] = erank_of(cpu::rescale(features[b].narrow(0, 0, len[b])), method);
  });
  return out;
}

at::Tensor attention_entropy_cpu(const at::Tensor& scores_in, const at::Tensor& lengths) {
  const auto scores = scores_in.detach();
  const int64_t batch = scores.size(0);
  check_lengths(lengths, batch);
  const int64_t* len = lengths.data_ptr<int64_t>();
  auto out = at::empty({batch}, scores.options().dtype(at::kDouble));
  for (int64_t b = 0; b < batch; ++b) {
    out.data_ptr<double>()[b] = cpu::attention_entropy_one(scores[b].narrow(0, 0, len[b]));
  }
  return out;
}

at::Tensor select_cpu(const at::Tensor& features_in, const at::Tensor& order, const at::Tensor& lengths,
                      const at::Tensor& attention_count, const at::Tensor& complexity,
                      const std::optional<at::Tensor>& relevance, int64_t keep, int64_t selection,
                      double tau_scale, double tau_max) {
  const auto features = features_in.detach();
  const int64_t batch = features.size(0), n = features.size(1);
  check_lengths(lengths, batch);
  TORCH_CHECK(order.scalar_type() == at::kLong && order.sizes() == at::IntArrayRef({batch, n}),
              "ada_vtp_cpu: order must be int64 [B, N]");
  TORCH_CHECK(attention_count.scalar_type() == at::kLong && complexity.scalar_type() == at::kDouble,
              "ada_vtp_cpu: attention_count must be int64 [B] and complexity fp64 [B]");
  const SelectParams p{keep, selection, tau_scale, tau_max};
  const auto order_c = order.contiguous();
  const auto count_c = attention_count.contiguous();
  const auto complexity_c = complexity.contiguous();
  at::Tensor relevance32;
  if (relevance.has_value()) relevance32 = relevance->detach().to(at::kFloat).contiguous();
  const int64_t* len = lengths.data_ptr<int64_t>();
  auto indices = at::empty({batch, keep}, features.options().dtype(at::kLong));
  cpu::parallel_for_with_state(0, batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const float* r = relevance32.defined() ? relevance32.data_ptr<float>() + b * n : nullptr;
      auto chosen = select_one(p, features[b].narrow(0, 0, len[b]), order_c.data_ptr<int64_t>() + b * n, len[b],
                               count_c.data_ptr<int64_t>()[b], complexity_c.data_ptr<double>()[b], r);
      TORCH_CHECK(static_cast<int64_t>(chosen.size()) == keep, "ada_vtp_cpu: a selection returned ",
                  chosen.size(), " tokens, expected ", keep);
      std::sort(chosen.begin(), chosen.end());
      std::copy(chosen.begin(), chosen.end(), indices.data_ptr<int64_t>() + b * keep);
    }
  });
  return indices;
}

}  // namespace ada_vtp
