// SFSI's mask heads in one pass (the native route of
// mmdyn.ops.pixel_sampling.mask_head_logits): K 3x3 convolutions from the block input
// to one logit each, padding 1, a common stride s,
//
//     logits[b, h, yo, xo] = bias[h] + sum_{ky, kx, c} x[b, s*yo + ky - 1, s*xo + kx - 1, c]
//                                                      * weight[h, 3*ky + kx, c].
//
// A one-output-channel convolution, or a GEMM with 9*K output columns, runs far below
// the CPU's peak (too few columns to fill its registers). Here each task takes a run
// of PIXELS output pixels of one image row and, for each kernel row, walks the channels
// LANES at a time (channels-last: a pixel's channels are contiguous): the input vectors
// of the S*(PIXELS-1)+3 input pixels the run reads are loaded once and serve all three
// horizontal taps of every pixel and head, the 3K weight vectors once for the run, with
// LANES independent partial sums per pixel and head that the compiler keeps in vector
// registers (2 multiply-adds per load at stride 1, where loading every tap's input
// again gave 1.3). Strided heads compute only their own output pixels. x is read once
// for all K heads.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "checks.h"
#include "lanes.h"

namespace {

constexpr int PIXELS = 8;  // output pixels per inner block

template <int K, int S>
void head_row(const float* __restrict__ x, const float* __restrict__ weight,
              const float* __restrict__ bias, const float* __restrict__ zeros,
              float* __restrict__ out, int64_t b, int64_t yo, int64_t height, int64_t width,
              int64_t channels, int64_t out_h, int64_t out_w) {
  constexpr int INPUTS = S * (PIXELS - 1) + 3;  // input pixels a run of PIXELS reads
  const int64_t vector_end = channels - channels % LANES;
  for (int64_t x0 = 0; x0 < out_w; x0 += PIXELS) {
    const int64_t count = std::min<int64_t>(PIXELS, out_w - x0);
    lanes_t acc[K][PIXELS];
    float tail[K][PIXELS];
    for (int h = 0; h < K; ++h) {
      for (int p = 0; p < PIXELS; ++p) {
        acc[h][p] = lanes_t{};
        tail[h][p] = 0.f;
      }
    }
    for (int64_t ky = 0; ky < 3; ++ky) {
      const int64_t yi = yo * S + ky - 1;
      if (yi < 0 || yi >= height) continue;
      // input i of the run: column x0*S - 1 + i (zeros outside the map or the run)
      const float* src[INPUTS];
      const int64_t last = (x0 + count - 1) * S + 1;  // the last column the run reads
      for (int i = 0; i < INPUTS; ++i) {
        const int64_t xi = x0 * S - 1 + i;
        src[i] = (xi >= 0 && xi < width && xi <= last)
                     ? x + ((b * height + yi) * width + xi) * channels : zeros;
      }
      const float* w[K][3];
      for (int h = 0; h < K; ++h) {
        for (int kx = 0; kx < 3; ++kx) w[h][kx] = weight + (h * 9 + ky * 3 + kx) * channels;
      }
      for (int64_t c = 0; c < vector_end; c += LANES) {
        lanes_t in[INPUTS];
        for (int i = 0; i < INPUTS; ++i) in[i] = load(src[i] + c);
        for (int h = 0; h < K; ++h) {
          for (int kx = 0; kx < 3; ++kx) {
            const lanes_t wv = load(w[h][kx] + c);
            for (int p = 0; p < PIXELS; ++p) acc[h][p] += in[S * p + kx] * wv;
          }
        }
      }
      for (int64_t c = vector_end; c < channels; ++c) {
        for (int h = 0; h < K; ++h) {
          for (int kx = 0; kx < 3; ++kx) {
            for (int p = 0; p < PIXELS; ++p) tail[h][p] += src[S * p + kx][c] * w[h][kx][c];
          }
        }
      }
    }
    for (int h = 0; h < K; ++h) {
      float* row = out + ((b * K + h) * out_h + yo) * out_w + x0;
      for (int64_t p = 0; p < count; ++p) {
        float sum = bias[h] + tail[h][p];
        for (int64_t l = 0; l < LANES; ++l) sum += acc[h][p][l];
        row[p] = sum;
      }
    }
  }
}

template <int K, int S>
void run_heads(const float* x, const float* weight, const float* bias, float* out,
               int64_t batch, int64_t height, int64_t width, int64_t channels,
               int64_t out_h, int64_t out_w) {
  const std::vector<float> zeros(channels, 0.f);
  // at least ~256k multiply-adds per task: small maps stay on the calling thread
  const int64_t per_row = std::max<int64_t>(1, out_w * 9 * channels * K);
  const int64_t grain = std::max<int64_t>(1, (1 << 18) / per_row);
  at::parallel_for(0, batch * out_h, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      head_row<K, S>(x, weight, bias, zeros.data(), out, row / out_h, row % out_h, height,
                     width, channels, out_h, out_w);
    }
  });
}

at::Tensor mask_head_logits(const at::Tensor& rows, const at::Tensor& weight,
                            const at::Tensor& bias, int64_t batch, int64_t height,
                            int64_t width, int64_t stride) {
  check_cpu("mask_head_logits", {rows, weight, bias});
  TORCH_CHECK(rows.dim() == 2 && rows.scalar_type() == at::kFloat && rows.is_contiguous() &&
                  rows.size(0) == batch * height * width,
              "rows must be the contiguous float32 [B*H*W, C] pixel rows of the map");
  const int64_t channels = rows.size(1), heads = weight.size(0);
  TORCH_CHECK(weight.dim() == 3 && weight.scalar_type() == at::kFloat &&
                  weight.is_contiguous() && weight.size(1) == 9 && weight.size(2) == channels,
              "weight must be a contiguous float32 [K, 9, C] tensor (taps kernel-row, "
              "kernel-col)");
  TORCH_CHECK(heads == 1 || heads == 2, "1 or 2 heads per call");
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == heads && bias.scalar_type() == at::kFloat &&
                  bias.is_contiguous(),
              "bias must be a contiguous float32 [K] tensor");
  TORCH_CHECK(stride == 1 || stride == 2, "stride must be 1 or 2 (ResNet's)");
  const int64_t out_h = (height - 1) / stride + 1, out_w = (width - 1) / stride + 1;
  at::Tensor out = at::empty({batch, heads, out_h, out_w}, rows.options());
  if (out.numel() == 0) return out;
  auto run = heads == 1 ? (stride == 1 ? run_heads<1, 1> : run_heads<1, 2>)
                        : (stride == 1 ? run_heads<2, 1> : run_heads<2, 2>);
  run(rows.data_ptr<float>(), weight.data_ptr<float>(), bias.data_ptr<float>(),
      out.data_ptr<float>(), batch, height, width, channels, out_h, out_w);
  return out;
}

}  // namespace

void register_mask_heads(pybind11::module& m) {
  m.def("mask_head_logits", &mask_head_logits,
        "K 3x3 one-logit convolutions (padding 1, stride 1 or 2) of channels-last pixel "
        "rows (see mask_heads.cpp)",
        pybind11::arg("rows"), pybind11::arg("weight"), pybind11::arg("bias"),
        pybind11::arg("batch"), pybind11::arg("height"), pybind11::arg("width"),
        pybind11::arg("stride"));
}
