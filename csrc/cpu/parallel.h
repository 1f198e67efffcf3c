// at::parallel_for whose worker threads run with the calling thread's ATen state.
//
// at::parallel_for does not carry thread-local state to its workers: under torch.inference_mode()
// (vLLM's encoder, `torch.inference_mode` in any serving code) the caller's tensors are inference
// tensors, and an ATen out= op that a worker runs on a view of one fails ("Inplace update to
// inference tensor outside InferenceMode").  Every loop body that calls ATen ops goes through
// this wrapper; loops over raw pointers need not.
#pragma once

#include <cstdint>
#include <utility>

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

namespace ada_vtp::cpu {

template <class F>
void parallel_for_with_state(int64_t begin, int64_t end, int64_t grain, const F& body) {
  const at::ThreadLocalState state;
  at::parallel_for(begin, end, grain, [&](int64_t first, int64_t last) {
    at::ThreadLocalStateGuard guard(state);
    body(first, last);
  });
}

}  // namespace ada_vtp::cpu
