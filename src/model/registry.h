// The architectures fennec knows, by GGUF `general.architecture`. Adding one is a new file in
// src/model/ plus one line in registry.cpp.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/expected.h"
#include "model/model.h"

namespace fennec::model {

using ArchLoader = Expected<std::unique_ptr<Model>> (*)(std::shared_ptr<const formats::GgufFile>);

struct ArchEntry {
  const char* name;
  ArchLoader load;
};

const std::vector<ArchEntry>& architectures();

// Each architecture file defines one of these.
Expected<std::unique_ptr<Model>> load_llama(std::shared_ptr<const formats::GgufFile> g);
Expected<std::unique_ptr<Model>> load_qwen2(std::shared_ptr<const formats::GgufFile> g);
Expected<std::unique_ptr<Model>> load_gemma3(std::shared_ptr<const formats::GgufFile> g);

}  // namespace fennec::model
