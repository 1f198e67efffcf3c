"""The test suite's shared helpers; test modules import from here, never from each other.

- data: input generators (exact-cosine features, distinct scores, ragged lengths).
- strategies: hypothesis strategies of `prune` calls and the profiles' example budgets.
- properties: the invariant checks the property tests apply to every backend.
- near_ties: the near-tie checker (does a difference between two selections come from a
  near-tie within the two sides' rounding?).
- precision: errors bounded by a multiple of PyTorch's own fp32 error.
- blas_paths: the op under MKL's other code path, in a child process.
- sm90_compile: every Triton launch compiled for sm_90 with ptxas (no GPU needed).
"""
