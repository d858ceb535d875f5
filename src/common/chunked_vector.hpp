// SPDX-License-Identifier: Apache-2.0
// A vector that grows in fixed chunks: elements never move and growing never copies the whole,
// so memory stays close to what is used (the hub keeps one record per job in it).
#pragma once

#include <array>
#include <cstddef>
#include <memory>
#include <vector>

namespace sortie {

template <typename T, std::size_t ChunkSize = 4096>
class ChunkedVector {
public:
  std::size_t size() const { return size_; }
  T& operator[](std::size_t i) { return (*chunks_[i / ChunkSize])[i % ChunkSize]; }
  const T& operator[](std::size_t i) const { return (*chunks_[i / ChunkSize])[i % ChunkSize]; }

  /// Grows to `n` elements (value-initialized); never shrinks.
  void grow_to(std::size_t n) {
    while (chunks_.size() * ChunkSize < n)
      chunks_.push_back(std::make_unique<std::array<T, ChunkSize>>());
    if (n > size_)
      size_ = n;
  }

private:
  std::vector<std::unique_ptr<std::array<T, ChunkSize>>> chunks_;
  std::size_t size_ = 0;
};

} // namespace sortie
