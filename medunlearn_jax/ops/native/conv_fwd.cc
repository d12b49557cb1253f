// Stride-1 2-D convolution (NHWC input, HWIO kernel, float32) for XLA:CPU, as an XLA FFI custom call.
//
// out[n, oh, ow, co] = sum over (kh, kw, ci) of x[n, oh + kh - pt, ow + kw - pl, ci] * w[kh, kw, ci, co],
// with x zero outside the image: taps that fall on padding are skipped, not multiplied by zero (on a 4x4 map a
// padded 3x3 convolution is 31 % zeros). Serves the forward pass of stride-1 layers and the input gradients
// (flipped kernels; stride-2 layers as parity sub-kernels). Output rows are split between the calling thread
// and XLA's intra-op pool.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kTile = 6;  // output positions per register tile (6 x 4 zmm = 24 accumulators)

struct Shape {
  int64_t n, h, w, ci, ho, wo, co, kh, kw, pt, pl;
};

// out[0:R, co0:co0+64] += sum_ci x[i*ci_stride + ci] * w[ci, co0:co0+64] for R consecutive positions.
template <int R>
inline void Tile(float* out, const float* x, const float* w, int64_t ci, int64_t co) {
  __m512 acc[R][4];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_loadu_ps(out + i * co + 16 * j);
  for (int64_t c = 0; c < ci; ++c) {
    const float* wr = w + c * co;
    const __m512 w0 = _mm512_loadu_ps(wr), w1 = _mm512_loadu_ps(wr + 16);
    const __m512 w2 = _mm512_loadu_ps(wr + 32), w3 = _mm512_loadu_ps(wr + 48);
    for (int i = 0; i < R; ++i) {
      const __m512 b = _mm512_set1_ps(x[i * ci + c]);
      acc[i][0] = _mm512_fmadd_ps(b, w0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(b, w1, acc[i][1]);
      acc[i][2] = _mm512_fmadd_ps(b, w2, acc[i][2]);
      acc[i][3] = _mm512_fmadd_ps(b, w3, acc[i][3]);
    }
  }
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < 4; ++j) _mm512_storeu_ps(out + i * co + 16 * j, acc[i][j]);
}

inline void TileN(int r, float* out, const float* x, const float* w, int64_t ci, int64_t co) {
  switch (r) {
    case 1: return Tile<1>(out, x, w, ci, co);
    case 2: return Tile<2>(out, x, w, ci, co);
    case 3: return Tile<3>(out, x, w, ci, co);
    case 4: return Tile<4>(out, x, w, ci, co);
    case 5: return Tile<5>(out, x, w, ci, co);
    case 6: return Tile<6>(out, x, w, ci, co);
    default: return;
  }
}

// One output row (n, oh): every segment of kTile positions, output-channel block and valid tap.
void Row(const float* x, const float* w, float* out, const Shape& d, int64_t n, int64_t oh) {
  float* orow = out + (n * d.ho + oh) * d.wo * d.co;
  std::memset(orow, 0, sizeof(float) * d.wo * d.co);
  for (int64_t kh = 0; kh < d.kh; ++kh) {
    const int64_t ih = oh + kh - d.pt;
    if (ih < 0 || ih >= d.h) continue;
    const float* xrow = x + (n * d.h + ih) * d.w * d.ci;
    for (int64_t co0 = 0; co0 < d.co; co0 += 64) {
      for (int64_t s0 = 0; s0 < d.wo; s0 += kTile) {
        const int64_t s1 = std::min(d.wo, s0 + kTile);
        for (int64_t kw = 0; kw < d.kw; ++kw) {
          // Valid positions of this tap in the segment: 0 <= ow + kw - pl < w.
          const int64_t lo = std::max(s0, d.pl - kw), hi = std::min(s1, d.w + d.pl - kw);
          if (hi <= lo) continue;
          const float* wt = w + (kh * d.kw + kw) * d.ci * d.co + co0;
          TileN(static_cast<int>(hi - lo), orow + lo * d.co + co0, xrow + (lo + kw - d.pl) * d.ci, wt, d.ci, d.co);
        }
      }
    }
  }
}

ffi::Error FwdImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                   ffi::ResultBuffer<ffi::F32> out, int64_t pad_top, int64_t pad_left) {
  auto xd = x.dimensions(), wd = w.dimensions(), od = out->dimensions();
  if (xd.size() != 4 || wd.size() != 4 || od.size() != 4)
    return ffi::Error::InvalidArgument("conv_fwd: x, w and out must be rank 4");
  const Shape d{xd[0], xd[1], xd[2], xd[3], od[1], od[2], od[3], wd[0], wd[1], pad_top, pad_left};
  if (od[0] != d.n || wd[2] != d.ci || wd[3] != d.co || d.co % 64)
    return ffi::Error::InvalidArgument("conv_fwd: unsupported shapes (need Cout % 64 == 0)");
  const float *xp = x.typed_data(), *wp = w.typed_data();
  float* op = out->typed_data();
  const int64_t rows = d.n * d.ho, threads = medunlearn::PoolThreads(pool);
  // Several items per thread so that a late helper still finds work, few enough to keep scheduling cheap.
  const int64_t wanted = std::min<int64_t>(rows, threads * 8);
  const int64_t rows_per_item = (rows + wanted - 1) / wanted;
  medunlearn::ParallelFor(pool, (rows + rows_per_item - 1) / rows_per_item, threads, [&](int64_t it) {
    const int64_t r1 = std::min(rows, (it + 1) * rows_per_item);
    for (int64_t r = it * rows_per_item; r < r1; ++r) Row(xp, wp, op, d, r / d.ho, r % d.ho);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MedunlearnConvFwd, FwdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left"));
