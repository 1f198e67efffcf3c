// The CPU kernels of the ada_vtp ops, as the internal ops torch.ops.ada_vtp_cpu.*: the stages
// that ada_vtp_kernels/ops.py calls after validating (the public schemas, fake kernels and CUDA
// kernels are registered there, in Python).
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(ada_vtp_cpu, m) {
  m.def("erank(Tensor features, Tensor lengths, int method) -> Tensor");
  m.def("attention_entropy(Tensor scores, Tensor lengths) -> Tensor");
  m.def(
      "select(Tensor features, Tensor order, Tensor lengths, Tensor attention_count, Tensor complexity, "
      "Tensor? relevance, int keep, int selection, float tau_scale, float tau_max) -> Tensor");
}

// not differentiable: autograd passes straight through, so the outputs never require grad
TORCH_LIBRARY_IMPL(ada_vtp_cpu, Autograd, m) {
  m.impl("erank", torch::CppFunction::makeFallthrough());
  m.impl("attention_entropy", torch::CppFunction::makeFallthrough());
  m.impl("select", torch::CppFunction::makeFallthrough());
}

TORCH_LIBRARY_IMPL(ada_vtp_cpu, CPU, m) {
  m.impl("erank", &ada_vtp::erank_cpu);
  m.impl("attention_entropy", &ada_vtp::attention_entropy_cpu);
  m.impl("select", &ada_vtp::select_cpu);
}
