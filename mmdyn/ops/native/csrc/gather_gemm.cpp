// A convolution on gathered rows with the gather fused into the product (the native
// route of mmdyn.ops.pixel_sampling.conv_rows for one group):
//
//     out[i] = bias + concat_t(table[taps[i, t]]) @ matrix      (then ReLU if asked)
//
// The table's rows may lie apart (a pitch above C: a channel slice of a channels-last
// map). With `relu_table` every row is ReLU'd as it is gathered (a conv on the ReLU of
// a map, the map left as it is); with `zero_past_end` a tap equal to the table's row
// count reads zeros (a conv's zero padding on a map that has no zero row after it).
//
// The PyTorch route gathers every tap row of every output row into one [n, T*C]
// matrix in memory and multiplies it afterwards; for a 3x3 conv that matrix is 9x the
// input's size. Here each task gathers a tile of output rows into a buffer that stays
// in cache and multiplies it at once, one thread per task, with oneDNN's 1x1
// convolution of the tile viewed as a channels-last [1, T*C, rows, 1] map (conv_weight:
// the matrix as [C_out, T*C, 1, 1]), either plain or prepacked in oneDNN's blocked
// layout (an mkldnn tensor: then torch's mkldnn::_convolution_pointwise runs it, the
// ReLU fused, with no weight reorder per tile). (An MKL addmm per tile won no shape
// class on the CPUs measured and was removed.)
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <vector>

#include "checks.h"

namespace {

// oneDNN's convolution on a prepacked weight (the op torch's inductor calls)
at::Tensor pointwise_conv(const at::Tensor& map, const at::Tensor& packed,
                          const c10::optional<at::Tensor>& bias, bool relu) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("mkldnn::_convolution_pointwise", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                            const std::optional<at::Tensor>&, at::IntArrayRef, at::IntArrayRef,
                            at::IntArrayRef, int64_t, c10::string_view,
                            c10::List<std::optional<at::Scalar>>,
                            std::optional<c10::string_view>)>();
  const int64_t zero[2] = {0, 0}, one[2] = {1, 1};
  return op.call(map, packed, bias, zero, one, one, 1, relu ? "relu" : "none",
                 c10::List<std::optional<at::Scalar>>(), std::nullopt);
}

at::Tensor gather_gemm(const at::Tensor& table, const at::Tensor& taps,
                       const at::Tensor& matrix, const c10::optional<at::Tensor>& bias,
                       bool relu, int64_t tile, const at::Tensor& conv_weight,
                       bool relu_table, bool zero_past_end) {
  check_cpu("gather_gemm", {table, taps, matrix, conv_weight});
  if (bias.has_value()) check_cpu("gather_gemm", {*bias});
  TORCH_CHECK(table.dim() == 2 && table.scalar_type() == at::kFloat &&
                  (table.stride(1) == 1 || table.size(1) <= 1) &&
                  (table.size(0) <= 1 || table.stride(0) >= table.size(1)),
              "table must be a float32 [N, C] tensor of contiguous rows");
  TORCH_CHECK(taps.dim() == 2 && taps.scalar_type() == at::kLong && taps.is_contiguous(),
              "taps must be a contiguous int64 [n, T] tensor");
  const int64_t rows = taps.size(0), count = taps.size(1), channels = table.size(1);
  TORCH_CHECK(matrix.dim() == 2 && matrix.scalar_type() == at::kFloat &&
                  matrix.is_contiguous() && matrix.size(0) == count * channels,
              "matrix must be a contiguous float32 [T*C, C_out] tensor");
  TORCH_CHECK(tile >= 1, "tile must be >= 1");
  const int64_t width = count * channels, out_channels = matrix.size(1);
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out_channels &&
                    bias->scalar_type() == at::kFloat,
                "bias must be a float32 [C_out] tensor");
  }
  TORCH_CHECK(conv_weight.dim() == 4 && conv_weight.size(0) == out_channels &&
                  conv_weight.size(1) == width && conv_weight.size(2) == 1 &&
                  conv_weight.size(3) == 1 && conv_weight.scalar_type() == at::kFloat,
              "conv_weight must be the float32 [C_out, T*C, 1, 1] weight of the matrix");
  const int64_t table_rows = table.size(0), pitch = table.stride(0);
  const int64_t* __restrict__ ids = taps.data_ptr<int64_t>();
  const float* __restrict__ source = table.data_ptr<float>();
  at::Tensor out = at::empty({rows, out_channels}, table.options());
  // tiles of about `tile` rows, as many as a multiple of the threads (balanced tasks)
  const int64_t threads = at::get_num_threads();
  int64_t tiles = (rows + tile - 1) / tile;
  tiles = std::max<int64_t>(1, (tiles + threads - 1) / threads * threads);
  tile = std::max<int64_t>(1, (rows + tiles - 1) / tiles);
  tiles = (rows + tile - 1) / tile;
  // The workers run ATen ops on `out`: they take the caller's inference / grad mode
  // (parallel_for does not carry it; an inference tensor written outside inference
  // mode is an error).
  const at::ThreadLocalState caller_state;
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    at::ThreadLocalStateGuard state_guard(caller_state);
    std::vector<float> buffer(tile * width);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t first = t * tile, size = std::min(tile, rows - first);
      for (int64_t r = 0; r < size; ++r) {
        float* dst = buffer.data() + r * width;
        const int64_t* row_ids = ids + (first + r) * count;
        for (int64_t k = 0; k < count; ++k) {
          float* __restrict__ to = dst + k * channels;
          if (zero_past_end && row_ids[k] == table_rows) {
            std::fill(to, to + channels, 0.0f);
            continue;
          }
          // checked as it is read (ATen's parallel_for rethrows on the calling thread)
          TORCH_CHECK(row_ids[k] >= 0 && row_ids[k] < table_rows,
                      "taps index rows outside the table");
          const float* __restrict__ src = source + row_ids[k] * pitch;
          if (relu_table) {
            for (int64_t c = 0; c < channels; ++c) to[c] = std::max(0.0f, src[c]);
          } else {
            std::copy(src, src + channels, to);
          }
        }
      }
      at::Tensor gathered = at::from_blob(buffer.data(), {size, width}, table.options());
      at::Tensor slice = out.narrow(0, first, size);
      at::Tensor map = gathered.view({1, size, 1, width}).permute({0, 3, 1, 2});
      const bool packed = conv_weight.is_mkldnn();
      at::Tensor product =
          packed ? pointwise_conv(map, conv_weight, bias, relu)
                 : at::mkldnn_convolution(map, conv_weight, bias, {0, 0}, {1, 1}, {1, 1}, 1);
      slice.copy_(product.permute({0, 2, 3, 1}).reshape({size, out_channels}));
      if (relu && !packed) slice.clamp_min_(0);
    }
  });
  return out;
}

// The product accumulated onto scattered rows, the scatter fused into it (the native
// route of mmdyn.ops.gemm.scatter_gemm_acc: a block's last 1x1 conv added to its
// identity at the active pixels):
//
//     dest[pixels[i]] = source[pixels[i]] + bias + rows[i] @ matrix   (then ReLU if asked)
//
// The PyTorch route gathers the identity rows into a buffer, accumulates the product
// onto it and copies it back; here each task multiplies a tile of rows (oneDNN's 1x1
// convolution, plain or prepacked weight as in gather_gemm) into a buffer that stays
// in cache and adds it straight onto its destination rows. `pixels` must be distinct
// (tasks write their rows concurrently); `source` may be `dest`. The rows of `dest` and
// `source` may lie apart (a column slice of a wider map: one group's channels).
at::Tensor scatter_gemm_acc(at::Tensor dest, const at::Tensor& source, const at::Tensor& pixels,
                            const at::Tensor& rows, const at::Tensor& matrix,
                            const c10::optional<at::Tensor>& bias, bool relu, int64_t tile,
                            const at::Tensor& conv_weight) {
  check_cpu("scatter_gemm_acc", {dest, source, pixels, rows, matrix, conv_weight});
  if (bias.has_value()) check_cpu("scatter_gemm_acc", {*bias});
  const int64_t out_channels = matrix.size(1), in_channels = matrix.size(0);
  TORCH_CHECK(dest.dim() == 2 && dest.scalar_type() == at::kFloat && dest.stride(1) == 1 &&
                  dest.size(1) == out_channels,
              "dest must be a float32 [P, C_out] tensor of contiguous rows");
  TORCH_CHECK(source.sizes() == dest.sizes() && source.scalar_type() == at::kFloat &&
                  source.stride(1) == 1,
              "source must be a float32 tensor of dest's shape, of contiguous rows");
  TORCH_CHECK(pixels.dim() == 1 && pixels.scalar_type() == at::kLong && pixels.is_contiguous(),
              "pixels must be a contiguous int64 1-D tensor");
  TORCH_CHECK(rows.dim() == 2 && rows.scalar_type() == at::kFloat && rows.is_contiguous() &&
                  rows.size(0) == pixels.size(0) && rows.size(1) == in_channels,
              "rows must be a contiguous float32 [n, C_in] tensor, one row per pixel");
  TORCH_CHECK(matrix.dim() == 2 && matrix.scalar_type() == at::kFloat,
              "matrix must be a float32 [C_in, C_out] tensor");
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out_channels &&
                    bias->scalar_type() == at::kFloat,
                "bias must be a float32 [C_out] tensor");
  }
  TORCH_CHECK(conv_weight.dim() == 4 && conv_weight.size(0) == out_channels &&
                  conv_weight.size(1) == in_channels && conv_weight.scalar_type() == at::kFloat,
              "conv_weight must be the float32 [C_out, C_in, 1, 1] weight of the matrix");
  TORCH_CHECK(tile >= 1, "tile must be >= 1");
  const int64_t count = pixels.size(0), table_rows = dest.size(0);
  if (count == 0) return dest;
  const int64_t* __restrict__ ids = pixels.data_ptr<int64_t>();
  const float* src = source.data_ptr<float>();
  float* dst = dest.data_ptr<float>();
  const int64_t src_pitch = source.stride(0), dst_pitch = dest.stride(0);
  const int64_t threads = at::get_num_threads();
  int64_t tiles = (count + tile - 1) / tile;
  tiles = std::max<int64_t>(1, (tiles + threads - 1) / threads * threads);
  tile = std::max<int64_t>(1, (count + tiles - 1) / tiles);
  tiles = (count + tile - 1) / tile;
  const at::ThreadLocalState caller_state;  // as in gather_gemm
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    at::ThreadLocalStateGuard state_guard(caller_state);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t first = t * tile, size = std::min(tile, count - first);
      at::Tensor map = rows.narrow(0, first, size).view({1, size, 1, in_channels})
                           .permute({0, 3, 1, 2});
      at::Tensor product =
          (conv_weight.is_mkldnn()
               ? pointwise_conv(map, conv_weight, bias, false)
               : at::mkldnn_convolution(map, conv_weight, bias, {0, 0}, {1, 1}, {1, 1}, 1))
              .permute({0, 2, 3, 1}).reshape({size, out_channels}).contiguous();
      const float* __restrict__ values = product.data_ptr<float>();
      for (int64_t r = 0; r < size; ++r) {
        const int64_t id = ids[first + r];
        TORCH_CHECK(id >= 0 && id < table_rows, "pixels index rows outside dest");
        const float* from = src + id * src_pitch;  // may be `to` (source is dest)
        const float* __restrict__ add = values + r * out_channels;
        float* to = dst + id * dst_pitch;
        if (relu) {
          for (int64_t c = 0; c < out_channels; ++c) to[c] = std::max(0.0f, from[c] + add[c]);
        } else {
          for (int64_t c = 0; c < out_channels; ++c) to[c] = from[c] + add[c];
        }
      }
    }
  });
  return dest;
}

// The input rows a k x k convolution reads at the output pixels `index` (flat ids on
// the out_h x out_w maps of the batch), kernel-row then kernel-col; taps outside the
// input read `zero_row` (the native route of mmdyn.ops.pixel_sampling.conv_tap_rows).
at::Tensor conv_tap_rows(const at::Tensor& index, int64_t out_h, int64_t out_w, int64_t in_h,
                         int64_t in_w, int64_t stride, int64_t dilation, int64_t padding,
                         int64_t zero_row, int64_t kernel) {
  check_cpu("conv_tap_rows", {index});
  TORCH_CHECK(index.dim() == 1 && index.scalar_type() == at::kLong && index.is_contiguous(),
              "index must be a contiguous int64 1-D tensor");
  TORCH_CHECK(out_h >= 1 && out_w >= 1 && in_h >= 1 && in_w >= 1 && stride >= 1 &&
                  dilation >= 1 && kernel >= 1,
              "sizes, stride, dilation and kernel must be >= 1");
  const int64_t n = index.numel(), taps = kernel * kernel;
  at::Tensor out = at::empty({n, taps}, index.options());
  const int64_t* __restrict__ ids = index.data_ptr<int64_t>();
  int64_t* __restrict__ rows = out.data_ptr<int64_t>();
  at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t id = ids[i], b = id / (out_h * out_w);
      const int64_t y = (id / out_w) % out_h, x = id % out_w;
      int64_t* row = rows + i * taps;
      for (int64_t ky = 0; ky < kernel; ++ky) {
        const int64_t yy = y * stride + ky * dilation - padding;
        for (int64_t kx = 0; kx < kernel; ++kx) {
          const int64_t xx = x * stride + kx * dilation - padding;
          const bool inside = yy >= 0 && yy < in_h && xx >= 0 && xx < in_w;
          row[ky * kernel + kx] = inside ? (b * in_h + yy) * in_w + xx : zero_row;
        }
      }
    }
  });
  return out;
}

// The windows of a channels-last map that feed the active patches (the native route of
// mmdyn.ops.patches.gather_windows): window n of patch (b, i, j) = index[n] covers rows
// i * step_h - offset_h + [0, size_h) and columns j * step_w - offset_w + [0, size_w);
// its pixels are written to out[(n * size_h + r) * size_w + c], zero where they lie
// outside the map (a dense conv's zero padding), ReLU'd if asked. `rows` are the map's
// [B * H * W, C] pixel rows, each contiguous (their pitch may exceed C: a channel slice).
// One pass: no tap-id tensor, no separate zero fill or ReLU over the stack.
at::Tensor gather_windows(const at::Tensor& rows, const at::Tensor& index, at::Tensor out,
                          int64_t height, int64_t width, int64_t step_h, int64_t step_w,
                          int64_t size_h, int64_t size_w, int64_t offset_h, int64_t offset_w,
                          bool relu) {
  check_cpu("gather_windows", {rows, index, out});
  TORCH_CHECK(rows.dim() == 2 && rows.scalar_type() == at::kFloat &&
                  (rows.stride(1) == 1 || rows.size(1) == 1),
              "rows must be a float32 [P, C] tensor of contiguous rows");
  TORCH_CHECK(index.dim() == 2 && index.size(1) == 3 && index.scalar_type() == at::kLong &&
                  index.is_contiguous(),
              "index must be a contiguous int64 [N, 3] tensor of (batch, row, col)");
  TORCH_CHECK(height >= 1 && width >= 1 && size_h >= 1 && size_w >= 1 &&
                  rows.size(0) % (height * width) == 0,
              "the map is height x width pixels per image, the window at least 1 x 1");
  const int64_t channels = rows.size(1), count = index.size(0);
  TORCH_CHECK(out.dim() == 2 && out.scalar_type() == at::kFloat && out.is_contiguous() &&
                  out.size(0) == count * size_h * size_w && out.size(1) == channels,
              "out must be a contiguous float32 [N * size_h * size_w, C] tensor");
  if (count == 0 || channels == 0) return out;
  const int64_t batch = rows.size(0) / (height * width), pitch = rows.stride(0);
  const int64_t* __restrict__ ids = index.data_ptr<int64_t>();
  const float* src = rows.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, count * size_h, 16, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / size_h, r = task % size_h;
      const int64_t b = ids[3 * n], y = ids[3 * n + 1] * step_h - offset_h + r;
      TORCH_CHECK(b >= 0 && b < batch, "index names an image outside the batch");
      const int64_t x0 = ids[3 * n + 2] * step_w - offset_w;
      float* to_row = dst + task * size_w * channels;
      for (int64_t c = 0; c < size_w; ++c) {
        const int64_t x = x0 + c;
        float* __restrict__ to = to_row + c * channels;
        if (y < 0 || y >= height || x < 0 || x >= width) {
          std::fill(to, to + channels, 0.0f);
          continue;
        }
        const float* __restrict__ from = src + ((b * height + y) * width + x) * pitch;
        if (relu) {
          for (int64_t k = 0; k < channels; ++k) to[k] = std::max(0.0f, from[k]);
        } else {
          std::copy(from, from + channels, to);
        }
      }
    }
  });
  return out;
}

}  // namespace


void register_gather_gemm(pybind11::module& m) {
  m.def("conv_tap_rows", &conv_tap_rows, "tap rows of a k x k conv (see gather_gemm.cpp)",
        pybind11::arg("index"), pybind11::arg("out_h"), pybind11::arg("out_w"),
        pybind11::arg("in_h"), pybind11::arg("in_w"), pybind11::arg("stride"),
        pybind11::arg("dilation"), pybind11::arg("padding"), pybind11::arg("zero_row"),
        pybind11::arg("kernel"));
  m.def("gather_windows", &gather_windows,
        "the windows of a channels-last map's pixel rows (see gather_gemm.cpp)",
        pybind11::arg("rows"), pybind11::arg("index"), pybind11::arg("out"),
        pybind11::arg("height"), pybind11::arg("width"), pybind11::arg("step_h"),
        pybind11::arg("step_w"), pybind11::arg("size_h"), pybind11::arg("size_w"),
        pybind11::arg("offset_h"), pybind11::arg("offset_w"), pybind11::arg("relu"));
  m.def("gather_gemm", &gather_gemm, "bias + gathered tap rows @ matrix (see gather_gemm.cpp)",
        pybind11::arg("table"), pybind11::arg("taps"), pybind11::arg("matrix"),
        pybind11::arg("bias"), pybind11::arg("relu"), pybind11::arg("tile"),
        pybind11::arg("conv_weight"), pybind11::arg("relu_table") = false,
        pybind11::arg("zero_past_end") = false);
  m.def("scatter_gemm_acc", &scatter_gemm_acc,
        "dest[pixels] = source[pixels] + bias + rows @ matrix (see gather_gemm.cpp)",
        pybind11::arg("dest"), pybind11::arg("source"), pybind11::arg("pixels"),
        pybind11::arg("rows"), pybind11::arg("matrix"), pybind11::arg("bias"),
        pybind11::arg("relu"), pybind11::arg("tile"), pybind11::arg("conv_weight"));
}
