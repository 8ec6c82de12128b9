// Read-only memory map of a whole file. Weights are views into it (zero-copy); the map lives as
// long as the MappedFile object.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "core/expected.h"

namespace fennec {

class MappedFile {
 public:
  static Expected<std::shared_ptr<MappedFile>> open(const std::string& path);
  // Wraps bytes already in memory (tests, fuzzing). The buffer is copied.
  static std::shared_ptr<MappedFile> from_bytes(const void* data, size_t size,
                                                std::string name = "<memory>");
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // True for a file map (whose pages may be released and read again), false for from_bytes.
  bool mapped() const { return mapped_; }

 private:
  MappedFile() = default;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  bool mapped_ = false;
  std::string path_;
  std::unique_ptr<uint8_t[]> owned_;
};

}  // namespace fennec
