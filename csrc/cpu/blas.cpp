#include "blas.h"

#include <ATen/ATen.h>

#include "parallel.h"

namespace ada_vtp::cpu::blas {
namespace {

// Output tiles: wide enough for MKL's kernels to run near their speed on one thread, small
// enough that a 64 x 4096 product still has 16 tiles to spread.  Fixed: never derived from the
// thread count.
constexpr int64_t kTileRows = 128;
constexpr int64_t kTileCols = 256;

// rows per block of gram_lower_fp64 (fixed, so that no thread count changes a product)
constexpr int64_t kGramRows = 96;

int64_t tiles(int64_t size, int64_t tile) { return (size + tile - 1) / tile; }

// out = beta out + alpha a b, tile by tile (out [M, N] contiguous)
void tiled_addmm(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, double beta, double alpha) {
  const int64_t m = out.size(0), n = out.size(1);
  const int64_t tiles_m = tiles(m, kTileRows), tiles_n = tiles(n, kTileCols);
  parallel_for_with_state(0, tiles_m * tiles_n, 1, [&](int64_t begin, int64_t end) {
    with_one_blas_thread([&] {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t r0 = (t / tiles_n) * kTileRows, c0 = (t % tiles_n) * kTileCols;
        const int64_t rows = std::min(kTileRows, m - r0), cols = std::min(kTileCols, n - c0);
        auto tile = out.narrow(0, r0, rows).narrow(1, c0, cols);
        at::addmm_out(tile, tile, a.narrow(0, r0, rows), b.narrow(1, c0, cols), beta, alpha);
      }
    });
  });
}

}  // namespace

at::Tensor mm(const at::Tensor& a, const at::Tensor& b) {
  auto out = at::empty({a.size(0), b.size(1)}, a.options());  // beta = 0: never read
  tiled_addmm(out, a, b, 0.0, 1.0);
  return out;
}

void addmm_(at::Tensor& c, const at::Tensor& a, const at::Tensor& b, double beta, double alpha) {
  TORCH_CHECK(c.is_contiguous(), "ada_vtp: addmm_ needs a contiguous output");
  tiled_addmm(c, a, b, beta, alpha);
}

at::Tensor gram_lower_fp64(const at::Tensor& a) {
  const int64_t r = a.size(0);
  const auto a64 = a.to(at::kDouble);
  auto out = at::empty({r, r}, a64.options());
  parallel_for_with_state(0, tiles(r, kGramRows), 1, [&](int64_t begin, int64_t end) {
    with_one_blas_thread([&] {
      for (int64_t block = begin; block < end; ++block) {
        const int64_t r0 = block * kGramRows, rows = std::min(kGramRows, r - r0);
        auto dst = out.narrow(0, r0, rows).narrow(1, 0, r0 + rows);
        at::mm_out(dst, a64.narrow(0, r0, rows), a64.narrow(0, 0, r0 + rows).t());
      }
    });
  });
  return out;
}

at::Tensor eigvalsh(const at::Tensor& a) {
  return with_one_blas_thread([&] { return at::linalg_eigvalsh(a); });
}

std::tuple<at::Tensor, at::Tensor> eigh(const at::Tensor& a) {
  return with_one_blas_thread([&] { return at::linalg_eigh(a); });
}

}  // namespace ada_vtp::cpu::blas
