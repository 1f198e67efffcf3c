// Host declarations of the ada_vtp ops (schemas in torch_bindings.cpp, semantics in
// docs/DESIGN.md and ada_vtp_kernels/reference.py).
#pragma once

#include <optional>
#include <string>
#include <tuple>

#include <ATen/core/Tensor.h>

namespace ada_vtp {

// Every method parameter of `prune`, as the schema passes them.
struct PruneParams {
  std::string method;
  double important_ratio;
  double attention_ratio;
  double gain;
  double erank_ref;
  double entropy_ref;
  double tau_max;
  double tau_scale;
  std::string complexity;
  std::string erank_method;
  bool compute_erank;
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> prune_cpu(
    const at::Tensor& features, const at::Tensor& scores, int64_t keep, const std::string& method,
    const std::optional<at::Tensor>& lengths, const std::optional<at::Tensor>& relevance,
    double important_ratio, double attention_ratio, double gain, double erank_ref, double entropy_ref,
    double tau_max, double tau_scale, const std::string& complexity, const std::string& erank_method,
    bool compute_erank);

at::Tensor erank_cpu(const at::Tensor& features, const std::optional<at::Tensor>& lengths,
                     const std::string& method);

at::Tensor attention_entropy_cpu(const at::Tensor& scores, const std::optional<at::Tensor>& lengths);

}  // namespace ada_vtp
