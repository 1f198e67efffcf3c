// Host declarations of the CPU kernels behind torch.ops.ada_vtp.* (schemas in torch_bindings.cpp;
// the public ops, their validation and the pipeline that calls these stages are
// ada_vtp_kernels/ops.py).  Inputs arrive validated; the kernels check only their own invariants.
#pragma once

#include <optional>

#include <ATen/core/Tensor.h>

namespace ada_vtp {

// [B] fp64 erank of every image's valid rows; method: spec::ErankMethod.
at::Tensor erank_cpu(const at::Tensor& features, const at::Tensor& lengths, int64_t method);

// [B] fp64 attention entropy (nats) of every image's valid scores.
at::Tensor attention_entropy_cpu(const at::Tensor& scores, const at::Tensor& lengths);

// What a selection reads besides its tensors (spec.PruneParams, reduced to this kernel's needs).
struct SelectParams {
  int64_t keep;
  int64_t selection;  // spec::Selection
  double tau_scale;   // agile: radius growth per rank
  double tau_max;     // agile: largest radius
};

// [B, K] int64 ascending: the selection of every image.  order [B, N] int64: the visit order
// (its first lengths[b] entries are the image's valid tokens); attention_count [B] int64: tokens
// taken from the order first (topk, maxmin, vispruner); complexity [B] fp64: agile's c.
at::Tensor select_cpu(const at::Tensor& features, const at::Tensor& order, const at::Tensor& lengths,
                      const at::Tensor& attention_count, const at::Tensor& complexity,
                      const std::optional<at::Tensor>& relevance, int64_t keep, int64_t selection,
                      double tau_scale, double tau_max);

}  // namespace ada_vtp
