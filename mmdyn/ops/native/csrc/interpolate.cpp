// SFSI Eq. 3 from the sampled rows, in one pass per output row (the native route of
// mmdyn.ops.pixel_sampling.interpolate_rows):
//
//     out[p] = F[p]                                   where pixel p is sampled,
//     out[p] = (G * (M F))[p] / ((G * M)[p] + eps)    elsewhere,
//
// G = g (x) g the separable Gaussian, zero padding. The PyTorch reference scatters the
// rows onto a zero canvas and runs two depthwise passes over the whole map, then a
// division and a row copy: five passes over B*H*W*C values. Here each output image row
// blurs the sampled rows of the k input rows around it vertically into a one-row
// buffer (cache-resident), walking each input row's list of sampled pixels (the
// sorted ids make it a contiguous run: no per-pixel test), then horizontally, and
// writes the row once.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "checks.h"
#include "lanes.h"

namespace {

// dst[c] += w * src[c]
inline void axpy(float* __restrict__ dst, const float* __restrict__ src, float w,
                 int64_t channels) {
  int64_t c = 0;
  for (; c + LANES <= channels; c += LANES) store(dst + c, load(dst + c) + w * load(src + c));
  for (; c < channels; ++c) dst[c] += w * src[c];
}

void interpolate_sampled_rows(const at::Tensor& rows, const at::Tensor& index,
                              const at::Tensor& kernel, double eps, at::Tensor out,
                              int64_t batch, int64_t height, int64_t width) {
  check_cpu("interpolate_sampled_rows", {rows, index, kernel, out});
  TORCH_CHECK(rows.dim() == 2 && rows.scalar_type() == at::kFloat && rows.is_contiguous(),
              "rows must be a contiguous float32 [n, C] tensor");
  const int64_t n = rows.size(0), channels = rows.size(1), pixels = batch * height * width;
  TORCH_CHECK(index.dim() == 1 && index.scalar_type() == at::kLong && index.is_contiguous() &&
                  index.numel() == n,
              "index must be a contiguous int64 tensor of the n sampled pixels' flat ids");
  TORCH_CHECK(kernel.dim() == 1 && kernel.scalar_type() == at::kFloat &&
                  kernel.is_contiguous() && kernel.size(0) % 2 == 1,
              "kernel must be a contiguous float32 1-D tensor of odd size");
  TORCH_CHECK(out.dim() == 2 && out.scalar_type() == at::kFloat && out.size(0) == pixels &&
                  out.size(1) == channels && out.stride(1) == 1 && out.stride(0) == channels,
              "out must be a row-contiguous float32 [B*H*W, C] tensor");
  const int64_t* __restrict__ ids = index.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(ids[i] >= 0 && ids[i] < pixels && (i == 0 || ids[i] > ids[i - 1]),
                "index must hold distinct flat ids in [0, B*H*W), sorted ascending (as "
                "sampled_pixels returns them)");
  }
  // first[r]: the first sampled pixel at or after image row r (r in [0, B*H])
  const int64_t image_rows = batch * height;
  std::vector<int64_t> first(image_rows + 1);
  for (int64_t r = 0; r <= image_rows; ++r) {
    first[r] = std::lower_bound(ids, ids + n, r * width) - ids;
  }
  const int64_t half = kernel.size(0) / 2;
  const float* __restrict__ source = rows.data_ptr<float>();
  const float* __restrict__ g = kernel.data_ptr<float>();
  float* __restrict__ target = out.data_ptr<float>();
  const float epsilon = static_cast<float>(eps);

  // at least ~64k multiply-adds per task: small maps stay on the calling thread
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, width * channels));
  at::parallel_for(0, image_rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> vertical(width * channels), weight(width);
    std::vector<int64_t> own(width);  // this row's sampled pixels: their row in `rows`, or -1
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / height, y = row % height;
      std::fill(vertical.begin(), vertical.end(), 0.f);
      std::fill(weight.begin(), weight.end(), 0.f);
      std::fill(own.begin(), own.end(), -1);
      // vertical pass of the numerator G * (M F) and of the normaliser G * M
      for (int64_t d = -half; d <= half; ++d) {
        const int64_t yy = y + d;
        if (yy < 0 || yy >= height) continue;
        const float w = g[d + half];
        const int64_t line = b * height + yy, origin = line * width;
        for (int64_t i = first[line]; i < first[line + 1]; ++i) {
          const int64_t x = ids[i] - origin;
          axpy(vertical.data() + x * channels, source + i * channels, w, channels);
          weight[x] += w;
          if (d == 0) own[x] = i;
        }
      }
      // horizontal pass, normalisation, sampled pixels copied
      float* out_row = target + row * width * channels;
      for (int64_t x = 0; x < width; ++x) {
        float* __restrict__ dst = out_row + x * channels;
        if (own[x] >= 0) {
          std::copy(source + own[x] * channels, source + (own[x] + 1) * channels, dst);
          continue;
        }
        const int64_t lo = std::max<int64_t>(-half, -x), hi = std::min(half, width - 1 - x);
        float denominator = 0.f;
        for (int64_t d = lo; d <= hi; ++d) denominator += g[d + half] * weight[x + d];
        const float scale = 1.f / (denominator + epsilon);
        int64_t c = 0;
        for (; c + LANES <= channels; c += LANES) {
          lanes_t acc = lanes_t{};
          for (int64_t d = lo; d <= hi; ++d) {
            acc += (g[d + half] * scale) * load(vertical.data() + (x + d) * channels + c);
          }
          store(dst + c, acc);
        }
        for (; c < channels; ++c) {
          float acc = 0.f;
          for (int64_t d = lo; d <= hi; ++d) {
            acc += g[d + half] * scale * vertical[(x + d) * channels + c];
          }
          dst[c] = acc;
        }
      }
    }
  });
}

}  // namespace

void register_gather_gemm(pybind11::module& m);  // gather_gemm.cpp
void register_mask_heads(pybind11::module& m);   // mask_heads.cpp

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("interpolate_sampled_rows", &interpolate_sampled_rows,
        "SFSI Eq. 3 from sampled rows into out [B*H*W, C] (see interpolate.cpp)");
  register_gather_gemm(m);
  register_mask_heads(m);
}
