// Argument checks shared by the native kernels.
#pragma once

#include <torch/extension.h>

#include <initializer_list>

// The native kernels read and write their tensors through host pointers: a tensor on
// another device (a CUDA pointer) must never reach them.
inline void check_cpu(const char* kernel, std::initializer_list<at::Tensor> tensors) {
  for (const at::Tensor& tensor : tensors) {
    TORCH_CHECK(tensor.device().is_cpu(), kernel, ": the native kernels take CPU tensors "
                "only, got a tensor on ", tensor.device());
  }
}
