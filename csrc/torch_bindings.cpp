// The one TORCH_LIBRARY block of the package: op schemas (with every method parameter and its
// default; ada_vtp_kernels/defaults.py holds the same values), the CPU kernels, and the
// autograd fallthrough.
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(ada_vtp, m) {
  m.def(
      "prune(Tensor features, Tensor scores, SymInt keep, str method=\"agile\", Tensor? lengths=None, "
      "Tensor? relevance=None, float important_ratio=0.5, float attention_ratio=0.5, float gain=0.5, "
      "float erank_ref=90.0, float entropy_ref=5.75, float tau_max=0.2, float tau_scale=0.01, "
      "str complexity=\"erank\", str erank_method=\"fast\", bool compute_erank=False) "
      "-> (Tensor indices, Tensor erank, Tensor entropy)");
  m.def("erank(Tensor features, Tensor? lengths=None, str method=\"fast\") -> Tensor");
  m.def("attention_entropy(Tensor scores, Tensor? lengths=None) -> Tensor");
}

// Selections and statistics are not differentiable: autograd passes straight through, so
// the outputs never require grad (instead of failing at backward time).
TORCH_LIBRARY_IMPL(ada_vtp, Autograd, m) {
  m.impl("prune", torch::CppFunction::makeFallthrough());
  m.impl("erank", torch::CppFunction::makeFallthrough());
  m.impl("attention_entropy", torch::CppFunction::makeFallthrough());
}

TORCH_LIBRARY_IMPL(ada_vtp, CPU, m) {
  m.impl("prune", &ada_vtp::prune_cpu);
  m.impl("erank", &ada_vtp::erank_cpu);
  m.impl("attention_entropy", &ada_vtp::attention_entropy_cpu);
}
