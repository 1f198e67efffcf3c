// Argument checks of the CPU ops.  They mirror ada_vtp_kernels/_validation.py message for
// message; every failure raises c10::ValueError (Python ValueError) naming the argument.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "../ops.h"

namespace ada_vtp::cpu {

// A shape as Python prints a tuple: (2, 3) or (5,).
std::string shape_str(at::IntArrayRef shape);

void check_features(const at::Tensor& features);
// Returns the valid length of every row (N for all when lengths is absent).
std::vector<int64_t> check_lengths(const std::optional<at::Tensor>& lengths, int64_t batch, int64_t n,
                                   const at::Device& device);
// A [B, N] per-token tensor (scores, relevance): shape, floating dtype, finite and >= 0 on valid tokens.
void check_row_values(const char* name, const at::Tensor& values, int64_t batch, int64_t n,
                      const at::Device& device, const std::vector<int64_t>& lengths);
// Checks that every valid feature is finite; returns each image's largest magnitude, which
// the rescale needs anyway (one pass over the features).
std::vector<double> check_finite_features(const at::Tensor& features, const std::vector<int64_t>& lengths);
void check_keep(int64_t keep, int64_t n, const std::vector<int64_t>& lengths);
void check_params(const PruneParams& p);
void check_erank_method(const std::string& method);

}  // namespace ada_vtp::cpu
