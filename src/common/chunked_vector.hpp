// SPDX-License-Identifier: Apache-2.0
// A vector that grows in fixed chunks: elements never move and growing never copies the whole,
// so memory stays close to what is used (the hub keeps one record per job in it).
#pragma once

#include <algorithm>
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

  /// The element at `i`, or null when its chunk was released.
  T* find(std::size_t i) {
    auto& c = chunks_[i / ChunkSize];
    return c ? &(*c)[i % ChunkSize] : nullptr;
  }
  const T* find(std::size_t i) const {
    const auto& c = chunks_[i / ChunkSize];
    return c ? &(*c)[i % ChunkSize] : nullptr;
  }

  /// Frees the chunk holding `i` when `empty` holds for each of its elements and the chunk holds
  /// no place past size() (a released chunk's elements are gone: find() returns null for them and
  /// operator[] must not be used; grow_to() never brings them back).
  template <typename Pred>
  bool release_if(std::size_t i, Pred empty) {
    // A chunk that reaches past the last element also holds the elements still to come.
    if ((i / ChunkSize + 1) * ChunkSize > size_)
      return false;
    auto& c = chunks_[i / ChunkSize];
    if (!c)
      return false;
    for (const T& e : *c)
      if (!empty(e))
        return false;
    c.reset();
    return true;
  }

  /// Calls `fn(element)` for each element of the chunks still held, in index order.
  template <typename Fn>
  void for_each(Fn fn) {
    for (std::size_t c = 0; c < chunks_.size(); ++c) {
      if (!chunks_[c])
        continue;
      std::size_t n = std::min(ChunkSize, size_ - c * ChunkSize);
      for (std::size_t k = 0; k < n; ++k)
        fn((*chunks_[c])[k]);
    }
  }

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
