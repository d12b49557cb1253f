// GroupNorm forward and backward (float32, x viewed as (B, N, C): N positions, C channels in G groups) for
// XLA:CPU, as XLA FFI custom calls.
//
// XLA:CPU lowers GroupNorm's reductions over (positions, channels of a group) to reduce-window trees and
// separate elementwise loops, 5-10x slower than a pass over memory (benchmarks/PERF_NOTES.md). Here each image
// is one work item: a first pass accumulates per-channel sums, the statistics are combined per group in
// double precision, and a second pass, which finds the image still in L2, writes the result.
//
// Forward: per-channel sums are taken around a shift (the channel's first element), so that the variance has
// no cancellation when |mean| >> std; group moments are combined exactly from the channels' shifted moments.
// Backward (closed form, as ops/norm.py): dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with
// g = dy * scale, written as dx = dy * a[c] + x * b[c] + d[c]; per-image partial sums of dy and dy * xhat are
// returned for XLA to add over the batch (dbias, dscale).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Dims {
  int64_t b, n, c, g;
};

ffi::Error CheckDims(ffi::Span<const int64_t> xd, int64_t scale_len, int64_t groups, Dims* d) {
  if (xd.size() != 3) return ffi::Error::InvalidArgument("group_norm: x must be (B, N, C)");
  *d = Dims{xd[0], xd[1], xd[2], groups};
  if (groups < 1 || d->c % groups || scale_len != d->c || d->n < 1)
    return ffi::Error::InvalidArgument("group_norm: groups must divide C; scale/bias of length C; N >= 1");
  return ffi::Error::Success();
}

ffi::Error FwdImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
                   ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> y, ffi::ResultBuffer<ffi::F32> mean,
                   ffi::ResultBuffer<ffi::F32> rstd, float eps) {
  Dims d;
  if (auto e = CheckDims(x.dimensions(), scale.element_count(), mean->dimensions().back(), &d); e.failure())
    return e;
  const float *xp = x.typed_data(), *sp = scale.typed_data(), *bp = bias.typed_data();
  float *yp = y->typed_data(), *mp = mean->typed_data(), *rp = rstd->typed_data();
  const int64_t cg = d.c / d.g;
  medunlearn::ParallelFor(pool, d.b, medunlearn::PoolThreads(pool), [&](int64_t i) {
    const float* xi = xp + i * d.n * d.c;
    std::vector<float> shift(xi, xi + d.c), s1(d.c, 0.f), s2(d.c, 0.f), a(d.c), off(d.c);
    for (int64_t p = 0; p < d.n; ++p) {
      const float* row = xi + p * d.c;
      for (int64_t c = 0; c < d.c; ++c) {
        const float v = row[c] - shift[c];
        s1[c] += v;
        s2[c] += v * v;
      }
    }
    for (int64_t g = 0; g < d.g; ++g) {
      double total = 0;
      for (int64_t c = g * cg; c < (g + 1) * cg; ++c) total += s1[c] + double(d.n) * shift[c];
      const double count = double(d.n) * cg, mu = total / count;
      double m2 = 0;  // sum over the group of (x - mu)^2, from each channel's moments about its shift
      for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
        const double k = shift[c] - mu;
        m2 += s2[c] + 2 * k * s1[c] + d.n * k * k;
      }
      const double r = 1.0 / std::sqrt(std::max(m2 / count, 0.0) + eps);
      mp[i * d.g + g] = float(mu);
      rp[i * d.g + g] = float(r);
      for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
        a[c] = float(r * sp[c]);
        off[c] = float(bp[c] - mu * r * sp[c]);
      }
    }
    float* yi = yp + i * d.n * d.c;
    for (int64_t p = 0; p < d.n; ++p) {
      const float* row = xi + p * d.c;
      float* out = yi + p * d.c;
      for (int64_t c = 0; c < d.c; ++c) out[c] = row[c] * a[c] + off[c];
    }
  });
  return ffi::Error::Success();
}

ffi::Error BwdImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                   ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> mean, ffi::Buffer<ffi::F32> rstd,
                   ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dscale_part,
                   ffi::ResultBuffer<ffi::F32> dbias_part) {
  Dims d;
  if (auto e = CheckDims(x.dimensions(), scale.element_count(), mean.dimensions().back(), &d); e.failure())
    return e;
  const float *xp = x.typed_data(), *gp = dy.typed_data(), *sp = scale.typed_data();
  const float *mp = mean.typed_data(), *rp = rstd.typed_data();
  float *dxp = dx->typed_data(), *dsp = dscale_part->typed_data(), *dbp = dbias_part->typed_data();
  const int64_t cg = d.c / d.g;
  medunlearn::ParallelFor(pool, d.b, medunlearn::PoolThreads(pool), [&](int64_t i) {
    const float *xi = xp + i * d.n * d.c, *gi = gp + i * d.n * d.c;
    std::vector<float> sdy(d.c, 0.f), sdyx(d.c, 0.f), ca(d.c), cb(d.c), cd(d.c), mu_c(d.c);
    for (int64_t c = 0; c < d.c; ++c) mu_c[c] = mp[i * d.g + c / cg];
    for (int64_t p = 0; p < d.n; ++p) {
      const float *xr = xi + p * d.c, *gr = gi + p * d.c;
      for (int64_t c = 0; c < d.c; ++c) {
        sdy[c] += gr[c];
        sdyx[c] += gr[c] * (xr[c] - mu_c[c]);  // centred: sum of dy * xhat is rstd times this
      }
    }
    for (int64_t g = 0; g < d.g; ++g) {
      const double r = rp[i * d.g + g], mu = mp[i * d.g + g], count = double(d.n) * cg;
      double m1 = 0, m2 = 0;  // means over the group of g = dy * scale and of g * xhat
      for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
        const double dyxhat = r * sdyx[c];
        dsp[i * d.c + c] = float(dyxhat);
        dbp[i * d.c + c] = sdy[c];
        m1 += sp[c] * double(sdy[c]);
        m2 += sp[c] * dyxhat;
      }
      m1 /= count;
      m2 /= count;
      for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
        ca[c] = float(r * sp[c]);
        cb[c] = float(-r * r * m2);
        cd[c] = float(r * (mu * r * m2 - m1));
      }
    }
    float* dxi = dxp + i * d.n * d.c;
    for (int64_t p = 0; p < d.n; ++p) {
      const float *xr = xi + p * d.c, *gr = gi + p * d.c;
      float* out = dxi + p * d.c;
      for (int64_t c = 0; c < d.c; ++c) out[c] = gr[c] * ca[c] + xr[c] * cb[c] + cd[c];
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MedunlearnGroupNormFwd, FwdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("eps"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(MedunlearnGroupNormBwd, BwdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
