// Stride-1 2-D convolution (NHWC input, HWIO kernel, float32) for XLA:CPU, as an XLA FFI custom call.
//
// out[n, oh, ow, co] = sum over (kh, kw, ci) of x[n, oh + kh - pt, ow + kw - pl, ci] * w[kh, kw, ci, co],
// with x zero outside the image: taps that fall on padding are skipped, not multiplied by zero (on a 4x4 map a
// padded 3x3 convolution is 31 % zeros). Serves the forward pass of stride-1 layers and the input gradients
// (flipped kernels; stride-2 layers as parity sub-kernels). The kernel arrives packed as (Cout/64, KH, KW, Cin, 64)
// so that each 64-channel block is contiguous. Work items, shared by the calling thread and XLA's intra-op pool,
// are (output-channel block, chunk of output rows), or on narrow maps chunks of (position, group of images).
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

// out[i*os + (0:64)] += sum_c x[i*xs + c] * w[c, 0:64] for R positions i: consecutive positions of a row
// (xs = Cin, os = Cout) or the same position in R consecutive images.
template <int R>
inline void Tile(float* out, int64_t os, const float* x, int64_t xs, const float* w, int64_t ci) {
  __m512 acc[R][4];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_loadu_ps(out + i * os + 16 * j);
  for (int64_t c = 0; c < ci; ++c) {
    const float* wr = w + c * 64;  // packed: 64 output channels per input-channel row
    const __m512 w0 = _mm512_loadu_ps(wr), w1 = _mm512_loadu_ps(wr + 16);
    const __m512 w2 = _mm512_loadu_ps(wr + 32), w3 = _mm512_loadu_ps(wr + 48);
    for (int i = 0; i < R; ++i) {
      const __m512 b = _mm512_set1_ps(x[i * xs + c]);
      acc[i][0] = _mm512_fmadd_ps(b, w0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(b, w1, acc[i][1]);
      acc[i][2] = _mm512_fmadd_ps(b, w2, acc[i][2]);
      acc[i][3] = _mm512_fmadd_ps(b, w3, acc[i][3]);
    }
  }
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < 4; ++j) _mm512_storeu_ps(out + i * os + 16 * j, acc[i][j]);
}

inline void TileN(int r, float* out, int64_t os, const float* x, int64_t xs, const float* w, int64_t ci) {
  switch (r) {
    case 1: return Tile<1>(out, os, x, xs, w, ci);
    case 2: return Tile<2>(out, os, x, xs, w, ci);
    case 3: return Tile<3>(out, os, x, xs, w, ci);
    case 4: return Tile<4>(out, os, x, xs, w, ci);
    case 5: return Tile<5>(out, os, x, xs, w, ci);
    case 6: return Tile<6>(out, os, x, xs, w, ci);
    default: return;
  }
}

inline const float* PackedTap(const float* w, const Shape& d, int64_t co0, int64_t kh, int64_t kw) {
  return w + (((co0 / 64) * d.kh + kh) * d.kw + kw) * d.ci * 64;
}

// Output channels [co0, co0 + 64) of one position (oh, ow) in images [n0, n0 + r), r <= kTile: on narrow maps
// (7x7, 4x4) row segments leave most register tiles part-empty, but the same position in several images has
// the same valid taps, so tiles run across images instead.
void Column(const float* x, const float* w, float* out, const Shape& d, int64_t n0, int r, int64_t oh,
            int64_t ow, int64_t co0) {
  const int64_t os = d.ho * d.wo * d.co, xs = d.h * d.w * d.ci;
  float* o = out + ((n0 * d.ho + oh) * d.wo + ow) * d.co + co0;
  for (int i = 0; i < r; ++i) std::memset(o + i * os, 0, sizeof(float) * 64);
  for (int64_t kh = 0; kh < d.kh; ++kh) {
    const int64_t ih = oh + kh - d.pt;
    if (ih < 0 || ih >= d.h) continue;
    for (int64_t kw = 0; kw < d.kw; ++kw) {
      const int64_t iw = ow + kw - d.pl;
      if (iw < 0 || iw >= d.w) continue;
      TileN(r, o, os, x + ((n0 * d.h + ih) * d.w + iw) * d.ci, xs, PackedTap(w, d, co0, kh, kw), d.ci);
    }
  }
}

// One output row (n, oh), output channels [co0, co0 + 64): every segment of kTile positions and valid tap.
void Row(const float* x, const float* w, float* out, const Shape& d, int64_t n, int64_t oh, int64_t co0) {
  float* orow = out + (n * d.ho + oh) * d.wo * d.co + co0;
  for (int64_t ow = 0; ow < d.wo; ++ow) std::memset(orow + ow * d.co, 0, sizeof(float) * 64);
  for (int64_t kh = 0; kh < d.kh; ++kh) {
    const int64_t ih = oh + kh - d.pt;
    if (ih < 0 || ih >= d.h) continue;
    const float* xrow = x + (n * d.h + ih) * d.w * d.ci;
    for (int64_t s0 = 0; s0 < d.wo; s0 += kTile) {
      const int64_t s1 = std::min(d.wo, s0 + kTile);
      for (int64_t kw = 0; kw < d.kw; ++kw) {
        // Valid positions of this tap in the segment: 0 <= ow + kw - pl < w.
        const int64_t lo = std::max(s0, d.pl - kw), hi = std::min(s1, d.w + d.pl - kw);
        if (hi <= lo) continue;
        TileN(static_cast<int>(hi - lo), orow + lo * d.co, d.co, xrow + (lo + kw - d.pl) * d.ci, d.ci,
              PackedTap(w, d, co0, kh, kw), d.ci);
      }
    }
  }
}

ffi::Error FwdImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                   ffi::ResultBuffer<ffi::F32> out, int64_t pad_top, int64_t pad_left) {
  auto xd = x.dimensions(), wd = w.dimensions(), od = out->dimensions();
  if (xd.size() != 4 || wd.size() != 5 || od.size() != 4)
    return ffi::Error::InvalidArgument("conv_fwd: x and out must be rank 4, packed w rank 5");
  const Shape d{xd[0], xd[1], xd[2], xd[3], od[1], od[2], od[3], wd[1], wd[2], pad_top, pad_left};
  if (od[0] != d.n || wd[3] != d.ci || wd[4] != 64 || wd[0] * 64 != d.co)
    return ffi::Error::InvalidArgument("conv_fwd: unsupported shapes (need Cout % 64 == 0, w packed as (Cout/64, KH, KW, Cin, 64))");
  const float *xp = x.typed_data(), *wp = w.typed_data();
  float* op = out->typed_data();
  const int64_t threads = medunlearn::PoolThreads(pool), co_blocks = d.co / 64;
  // Work units: output rows, or on narrow maps (positions, group of kTile images) columns.
  const bool columns = d.wo < kTile + 2;
  const int64_t groups = (d.n + kTile - 1) / kTile;
  const int64_t units = columns ? groups * d.ho * d.wo : d.n * d.ho;
  // Items are (output-channel block, chunk of units), channel block outermost: an item re-reads one block's
  // weights (all taps and input channels) for every unit, so they stay in L2 instead of the whole kernel
  // streaming through it once per unit. Several items per thread so that a late helper still finds work.
  const int64_t chunks = std::min<int64_t>(units, std::max<int64_t>(1, threads * 8 / co_blocks));
  medunlearn::ParallelFor(pool, co_blocks * chunks, threads, [&](int64_t it) {
    const int64_t co0 = (it / chunks) * 64, c = it % chunks;
    const int64_t u1 = (c + 1) * units / chunks;
    for (int64_t u = c * units / chunks; u < u1; ++u) {
      if (columns) {
        const int64_t g = u / (d.ho * d.wo), p = u % (d.ho * d.wo), n0 = g * kTile;
        Column(xp, wp, op, d, n0, static_cast<int>(std::min<int64_t>(kTile, d.n - n0)), p / d.wo, p % d.wo, co0);
      } else {
        Row(xp, wp, op, d, u / d.ho, u % d.ho, co0);
      }
    }
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
