// What `fennec info MODEL` prints about a GGUF file: the header facts, every metadata key with its
// type and value, and a summary of the tensor table. Plain text, one item per line; `full` prints
// arrays without abbreviation and one line per tensor.
#pragma once

#include <string>

#include "formats/gguf.h"

namespace fennec::formats {

std::string render_info(const GgufFile& file, bool full);

}  // namespace fennec::formats
