// Matrix products and eigensolvers whose bits depend on nothing but their operands: not on
// torch.get_num_threads(), not on what else runs in the batch.
//
// MKL's threaded BLAS and LAPACK round by the thread count: on an Intel Xeon (AVX-512 kernels)
// a [64, 201] x [201, 178] sgemm differs in its last bits between one and two threads, and so
// does eigvalsh of a 178 x 178 Gram on any CPU.  Here every output is cut into tiles of a fixed
// size, each tile is one BLAS call on one thread (mkl_set_num_threads_local, this thread only),
// and only the tiles are spread over the threads: the reduction of every element runs the same
// way whatever the thread count.  Operands must be owned, contiguous buffers (rescale() gives
// one per image), since MKL's rounding may also depend on their alignment.
#pragma once

#include <tuple>

#include <ATen/core/Tensor.h>

namespace ada_vtp::cpu::blas {

// a [M, K] times b [K, N] -> [M, N] (any float dtype, strides as ATen's mm takes them)
at::Tensor mm(const at::Tensor& a, const at::Tensor& b);

// c = beta c + alpha a b, in place; c [M, N] contiguous
void addmm_(at::Tensor& c, const at::Tensor& a, const at::Tensor& b, double beta, double alpha);

// The lower triangle (diagonal included) of a aᵀ in fp64, a [r, c] fp32 contiguous: the products
// of fp32 entries are exact in fp64 and only their sums round, so the Gram's error stays about
// 1e-16 of each entry rather than fp32's 1e-7 (which an exactly low-rank image's zero
// eigenvalues would inherit).  Fixed blocks of rows, each one dgemm on one thread; the strictly
// upper triangle is left unset.
at::Tensor gram_lower_fp64(const at::Tensor& a);

// at::linalg_eigvalsh / at::linalg_eigh on one thread (they read the lower triangle)
at::Tensor eigvalsh(const at::Tensor& a);
std::tuple<at::Tensor, at::Tensor> eigh(const at::Tensor& a);

// MKL's thread-local thread count, in its Fortran binding (a pointer argument), the name torch's
// x86 wheels export from the MKL they link statically (their C name is an alias of the same
// code there, so it cannot be called with an int).  Weak: with a torch built without MKL the
// pointer is null, the library still loads, and the calls below are the plain ones.
extern "C" int mkl_set_num_threads_local_(const int* threads) __attribute__((weak));

// f() with BLAS and LAPACK on one thread (this thread only), the previous count restored after.
template <typename F>
auto with_one_blas_thread(F f) {
  if (mkl_set_num_threads_local_ == nullptr) return f();
  static constexpr int kOne = 1;
  struct Restore {
    int before;
    ~Restore() { mkl_set_num_threads_local_(&before); }
  } restore{mkl_set_num_threads_local_(&kOne)};
  return f();
}

}  // namespace ada_vtp::cpu::blas
