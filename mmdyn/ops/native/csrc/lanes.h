// LANES floats as one value, shared by the native kernels: GCC/Clang vector extensions
// compile it to the widest registers -march=native offers (one AVX-512 register, two
// AVX2 ones); aligned(4) allows unaligned loads and stores of channel runs.
#pragma once

#include <cstdint>

constexpr int64_t LANES = 16;
typedef float lanes_t __attribute__((vector_size(LANES * sizeof(float)), aligned(4)));

inline lanes_t load(const float* p) { return *reinterpret_cast<const lanes_t*>(p); }
inline void store(float* p, lanes_t v) { *reinterpret_cast<lanes_t*>(p) = v; }
