// CPU kernels of ada_vtp::prune, ::erank and ::attention_entropy: checks, then one task per
// image (at::parallel_for over the batch): statistics, distances, greedy selection.
#include <cmath>
#include <limits>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "../ops.h"
#include "checks.h"
#include "erank_fast.h"
#include "image.h"
#include "select.h"

namespace ada_vtp {
namespace {

using cpu::Distances;

// K rows of fp64 dot products cost about what the fp64 Gram's triangle costs at 8 K = n
// (measured on 2 EPYC cores, one 576 x 1024 image: dpp with 64 rows 7.2 ms, divprune with the
// triangle 7.4 ms), so beyond that the Gram serves the rows.
constexpr int64_t kRowVsGramCost = 8;

bool needs_erank(const PruneParams& p) {
  return p.compute_erank || p.method == "mix_adaptive" || (p.method == "agile" && p.complexity == "erank");
}

double erank_of(const at::Tensor& xs, const std::string& method) {
  return method == "fast" ? cpu::erank_fast_one(xs) : cpu::erank_one(xs);
}

// "fast" is a sequence of matrix products, each parallel itself, and "exact" one eigensolver:
// with fewer images than threads, "fast" runs image after image so that its products get every
// thread (inside a parallel_for they would run on one).
bool erank_image_by_image(const std::string& method, int64_t batch) {
  return method == "fast" && batch < at::get_num_threads();
}

int64_t mix_attention_count(int64_t k, double ratio) {
  return static_cast<int64_t>(std::floor(static_cast<double>(k) * ratio + 0.5));
}

// The k selected tokens of one image (any order) from its valid rows.
// xs: the rescaled valid rows [n, D], undefined when the method reads no features.
std::vector<int64_t> select_one(const PruneParams& p, const at::Tensor& xs, int64_t n, const float* scores,
                                const float* relevance, int64_t k, double erank, double entropy) {
  const bool rows_cheaper = kRowVsGramCost * k < n;
  auto order = cpu::score_order(scores, n);
  if (p.method == "attention") return {order.begin(), order.begin() + k};
  if (p.method == "mix" || p.method == "mix_adaptive") {
    double ratio = p.attention_ratio;
    if (p.method == "mix_adaptive") {
      ratio = std::min(std::max(ratio + p.gain * (1.0 - erank / p.erank_ref), 0.0), 1.0);
    }
    const int64_t k_att = mix_attention_count(k, ratio);
    std::vector<int64_t> top(order.begin(), order.begin() + k_att);
    if (k_att == k) return top;
    // with no attention token the first pick compares all pairs
    Distances dist(xs, k_att == 0 || !rows_cheaper, k);
    return cpu::select_maxmin(dist, k, std::move(top));
  }
  if (p.method == "divprune") {
    Distances dist(xs, /*full_gram=*/true, 0);
    return cpu::select_maxmin(dist, k, {});
  }
  if (p.method == "vispruner") {
    Distances dist(xs, /*full_gram=*/true, 0);
    return cpu::select_vispruner(dist, order, k, p.important_ratio);
  }
  Distances dist(xs, !rows_cheaper, k);
  if (p.method == "dpp") {
    std::vector<float> ones;
    if (relevance == nullptr) {
      ones.assign(n, 1.0f);
      relevance = ones.data();
    }
    return cpu::select_dpp(dist, relevance, k);
  }
  const double complexity = p.complexity == "erank" ? erank / p.erank_ref : entropy / p.entropy_ref;
  return cpu::select_agile(dist, order, k, complexity, p.tau_scale, p.tau_max);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> prune_cpu(
    const at::Tensor& features, const at::Tensor& scores, int64_t keep, const std::string& method,
    const std::optional<at::Tensor>& lengths, const std::optional<at::Tensor>& relevance,
    double important_ratio, double attention_ratio, double gain, double erank_ref, double entropy_ref,
    double tau_max, double tau_scale, const std::string& complexity, const std::string& erank_method,
    bool compute_erank) {
  // the autograd fallthrough skips the Autograd key for this call only: without this guard the
  // ATen ops below would dispatch through autograd again and fail on inputs that require grad
  // (out= variants such as addmm_out reject them); the guard is this thread's, so the worker
  // threads read detached copies (rescale)
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const PruneParams p{method,   important_ratio, attention_ratio, gain,       erank_ref,   entropy_ref,
                      tau_max,  tau_scale,       complexity,      erank_method, compute_erank};
  cpu::check_params(p);
  cpu::check_features(features);
  const int64_t batch = features.size(0), n = features.size(1);
  auto len = cpu::check_lengths(lengths, batch, n, features.device());
  cpu::check_keep(keep, n, len);
  cpu::check_row_values("scores", scores, batch, n, features.device(), len);
  if (relevance.has_value()) {
    TORCH_CHECK_VALUE(method == "dpp", "relevance is only used by method='dpp', got method='", method, "'");
    cpu::check_row_values("relevance", *relevance, batch, n, features.device(), len);
  }
  const auto amax = cpu::check_finite_features(features, len);

  auto scores32 = scores.to(at::kFloat).contiguous();
  at::Tensor relevance32;
  if (relevance.has_value()) relevance32 = relevance->to(at::kFloat).contiguous();
  auto indices = at::empty({batch, keep}, features.options().dtype(at::kLong));
  const bool with_erank = needs_erank(p);
  // erank is [B] where computed and [0] where the method needs none (no placeholder values)
  auto erank_out = at::empty({with_erank ? batch : 0}, features.options().dtype(at::kFloat));
  auto entropy_out = at::empty({batch}, features.options().dtype(at::kFloat));
  const bool reads_features =
      with_erank || !(method == "attention" || (method == "mix" && mix_attention_count(keep, attention_ratio) == keep));

  std::vector<double> eranks(batch, std::numeric_limits<double>::quiet_NaN());
  std::vector<at::Tensor> rescaled(batch);  // filled here when the erank runs first, else below
  const bool erank_first = with_erank && erank_image_by_image(erank_method, batch);
  if (erank_first) {
    for (int64_t b = 0; b < batch; ++b) {
      rescaled[b] = cpu::rescale(features[b].narrow(0, 0, len[b]), amax[b]);
      eranks[b] = erank_of(rescaled[b], erank_method);
    }
  }
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t nb = len[b];
      const float* s = scores32.data_ptr<float>() + b * n;
      const float* r = relevance32.defined() ? relevance32.data_ptr<float>() + b * n : nullptr;
      at::Tensor xs = rescaled[b];  // attention-only selections never read the features
      if (reads_features && !xs.defined()) xs = cpu::rescale(features[b].narrow(0, 0, nb), amax[b]);
      const double entropy = cpu::attention_entropy_one(scores[b].narrow(0, 0, nb));
      if (with_erank && !erank_first) eranks[b] = erank_of(xs, erank_method);
      const double erank = eranks[b];
      auto chosen = select_one(p, xs, nb, s, r, keep, erank, entropy);
      std::sort(chosen.begin(), chosen.end());
      std::copy(chosen.begin(), chosen.end(), indices.data_ptr<int64_t>() + b * keep);
      if (with_erank) erank_out.data_ptr<float>()[b] = static_cast<float>(erank);
      entropy_out.data_ptr<float>()[b] = static_cast<float>(entropy);
    }
  });
  return {indices, erank_out, entropy_out};
}

at::Tensor erank_cpu(const at::Tensor& features, const std::optional<at::Tensor>& lengths,
                     const std::string& method) {
  // the autograd fallthrough skips the Autograd key for this call only: without this guard the
  // ATen ops below would dispatch through autograd again and fail on inputs that require grad
  // (out= variants such as addmm_out reject them); the guard is this thread's, so the worker
  // threads read detached copies (rescale)
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  cpu::check_erank_method(method);
  cpu::check_features(features);
  const int64_t batch = features.size(0);
  auto len = cpu::check_lengths(lengths, batch, features.size(1), features.device());
  const auto amax = cpu::check_finite_features(features, len);
  auto out = at::empty({batch}, features.options().dtype(at::kFloat));
  const int64_t grain = erank_image_by_image(method, batch) ? batch : 1;
  at::parallel_for(0, batch, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      out.data_ptr<float>()[b] = static_cast<float>(erank_of(cpu::rescale(features[b].narrow(0, 0, len[b]), amax[b]), method));
    }
  });
  return out;
}

at::Tensor attention_entropy_cpu(const at::Tensor& scores, const std::optional<at::Tensor>& lengths) {
  // the autograd fallthrough skips the Autograd key for this call only: without this guard the
  // ATen ops below would dispatch through autograd again (this op runs on one thread)
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  TORCH_CHECK_VALUE(scores.dim() == 2 && scores.numel() > 0, "scores must be a non-empty tensor [B, N], got ",
                    cpu::shape_str(scores.sizes()));
  const int64_t batch = scores.size(0), n = scores.size(1);
  auto len = cpu::check_lengths(lengths, batch, n, scores.device());
  cpu::check_row_values("scores", scores, batch, n, scores.device(), len);
  auto out = at::empty({batch}, scores.options().dtype(at::kFloat));
  for (int64_t b = 0; b < batch; ++b) {
    out.data_ptr<float>()[b] = static_cast<float>(cpu::attention_entropy_one(scores[b].narrow(0, 0, len[b])));
  }
  return out;
}

}  // namespace ada_vtp
