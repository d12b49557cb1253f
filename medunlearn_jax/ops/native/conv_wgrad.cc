// Weight gradient of a 2-D convolution (NHWC input, HWIO kernel) for XLA:CPU, as an XLA FFI custom call.
//
// dw[kh, kw, ci, co] = sum over (n, oh, ow) of x[n, oh*s + kh - pt, ow*s + kw - pl, ci] * dy[n, oh, ow, co],
// where taps that fall on padding are skipped instead of multiplied by zero. Work is split into
// (input-channel block) items shared by the calling thread and XLA's intra-op pool; each item owns its rows of
// dw, so no reduction is needed. The inner kernel keeps a 4 (ci) x 64 (co) block of dw in 16 AVX-512
// registers while it streams over output positions.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kCi = 4;    // input channels per register block
constexpr int kCo = 64;   // output channels per register block (4 x 16 lanes)

struct Shape {
  int64_t n, h, w, ci, ho, wo, co, kh, kw, s, pt, pl;
};

// Valid output range [lo, hi) of one tap along one axis: 0 <= o*s + k - p < size.
inline void ValidRange(int64_t k, int64_t p, int64_t s, int64_t size, int64_t out, int64_t* lo, int64_t* hi) {
  int64_t a = p - k;  // need o*s >= a
  *lo = a <= 0 ? 0 : (a + s - 1) / s;
  int64_t b = size - 1 + p - k;  // need o*s <= b
  *hi = b < 0 ? 0 : std::min<int64_t>(out, b / s + 1);
  if (*hi < *lo) *hi = *lo;
}

// One block: dw[kh, kw, ci0:ci0+4, co0:co0+64] += the sum over images [n0, n1) and valid positions.
inline void Block(const float* x, const float* dy, float* dw, const Shape& d, int64_t kh, int64_t kw,
                  int64_t ci0, int64_t co0, int64_t n0, int64_t n1) {
  int64_t oh0, oh1, ow0, ow1;
  ValidRange(kh, d.pt, d.s, d.h, d.ho, &oh0, &oh1);
  ValidRange(kw, d.pl, d.s, d.w, d.wo, &ow0, &ow1);
  float* out = dw + ((kh * d.kw + kw) * d.ci + ci0) * d.co + co0;
  __m512 acc[kCi][4];
  for (int i = 0; i < kCi; ++i)
    for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_loadu_ps(out + i * d.co + 16 * j);
  for (int64_t n = n0; n < n1; ++n) {
    const float* xn = x + n * d.h * d.w * d.ci + ci0;
    const float* dyn = dy + n * d.ho * d.wo * d.co + co0;
    for (int64_t oh = oh0; oh < oh1; ++oh) {
      const int64_t ih = oh * d.s + kh - d.pt;
      const float* xrow = xn + (ih * d.w + ow0 * d.s + kw - d.pl) * d.ci;
      const float* drow = dyn + (oh * d.wo + ow0) * d.co;
      const int64_t xstep = d.s * d.ci;
      for (int64_t ow = ow0; ow < ow1; ++ow, xrow += xstep, drow += d.co) {
        const __m512 g0 = _mm512_loadu_ps(drow), g1 = _mm512_loadu_ps(drow + 16);
        const __m512 g2 = _mm512_loadu_ps(drow + 32), g3 = _mm512_loadu_ps(drow + 48);
        for (int i = 0; i < kCi; ++i) {
          const __m512 b = _mm512_set1_ps(xrow[i]);
          acc[i][0] = _mm512_fmadd_ps(b, g0, acc[i][0]);
          acc[i][1] = _mm512_fmadd_ps(b, g1, acc[i][1]);
          acc[i][2] = _mm512_fmadd_ps(b, g2, acc[i][2]);
          acc[i][3] = _mm512_fmadd_ps(b, g3, acc[i][3]);
        }
      }
    }
  }
  for (int i = 0; i < kCi; ++i)
    for (int j = 0; j < 4; ++j) _mm512_storeu_ps(out + i * d.co + 16 * j, acc[i][j]);
}

ffi::Error WgradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                     ffi::ResultBuffer<ffi::F32> dw, int64_t stride, int64_t pad_top, int64_t pad_left) {
  auto xd = x.dimensions(), gd = dy.dimensions(), wd = dw->dimensions();
  if (xd.size() != 4 || gd.size() != 4 || wd.size() != 4)
    return ffi::Error::InvalidArgument("conv_wgrad: x, dy and dw must be rank 4");
  const Shape d{xd[0], xd[1], xd[2], xd[3], gd[1], gd[2], gd[3], wd[0], wd[1], stride, pad_top, pad_left};
  if (gd[0] != d.n || wd[2] != d.ci || wd[3] != d.co || d.ci % kCi || d.co % kCo || stride < 1)
    return ffi::Error::InvalidArgument("conv_wgrad: unsupported shapes (need Ci % 4 == 0, Co % 64 == 0)");
  const float *xp = x.typed_data(), *gp = dy.typed_data();
  float* wp = dw->typed_data();
  const int64_t threads = medunlearn::PoolThreads(pool), ci_blocks = d.ci / kCi;
  // Items are groups of input-channel blocks; each owns its rows of dw, so no reduction is needed.
  const int64_t items = std::min<int64_t>(threads, ci_blocks);
  // Chunks of whole images whose x and dy fill about half of a 1 MiB L2 (at least one image).
  const int64_t image_bytes = sizeof(float) * (d.h * d.w * d.ci + d.ho * d.wo * d.co);
  const int64_t images_per_chunk = std::max<int64_t>(1, (512 << 10) / image_bytes);
  medunlearn::ParallelFor(pool, items, threads, [&](int64_t it) {
    const int64_t b0 = it * ci_blocks / items, b1 = (it + 1) * ci_blocks / items;
    for (int64_t t = 0; t < d.kh * d.kw; ++t)
      for (int64_t b = b0; b < b1; ++b)
        std::memset(wp + (t * d.ci + b * kCi) * d.co, 0, sizeof(float) * kCi * d.co);
    // Images outermost, in chunks small enough that their x and dy stay in L2 while every
    // (channel block, tap) pass re-reads them.
    for (int64_t n0 = 0; n0 < d.n; n0 += images_per_chunk) {
      const int64_t n1 = std::min(d.n, n0 + images_per_chunk);
      for (int64_t b = b0; b < b1; ++b)
        for (int64_t co0 = 0; co0 < d.co; co0 += kCo)
          for (int64_t kh = 0; kh < d.kh; ++kh)
            for (int64_t kw = 0; kw < d.kw; ++kw) Block(xp, gp, wp, d, kh, kw, b * kCi, co0, n0, n1);
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MedunlearnConvWgrad, WgradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left"));
