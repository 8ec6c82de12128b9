// Which bytes the weight scrubber covers: the bytes the kernels read. A matrix repacked at load
// (kernels/cpu/repack.h) is read from its packed copy; its mapped original is released (madvise
// DONTNEED) and never read again, so scrubbing the original would page the whole model back in
// (resident memory grows by its size) to check bytes nothing uses. The rule:
//  - a packed matrix: its packed copy;
//  - any other tensor: its mapped bytes;
//  - a tensor that is packed and also read in place (the token embedding tied to the output: the
//    output product reads the copy, the embedding lookup reads rows of the mapped original):
//    both.
// The same names serve fault injection of the in-memory copy (src/ras/fault_injection.h).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "ras/scrubber.h"

namespace fennec::formats {
struct GgufTensor;
}
namespace fennec::model {
class Model;
}

namespace fennec::ras {

// model::Model::packed_regions() names each copy "<tensor> (packed)".
inline constexpr std::string_view kPackedSuffix = " (packed)";
// The tensor a packed region copies ("" if the name is not "<tensor> (packed)").
std::string packed_tensor_name(std::string_view region_name);

// Tensors read in place by row even when packed: the token embedding (get_rows).
const std::vector<std::string>& default_read_in_place();

// tensors: the file's tensor table (mapped bytes); packed: the packed copies, named as above.
// Regions come in the file's tensor order (a packed copy where its original was), then any
// packed copy whose tensor is not in the table.
std::vector<ScrubRegion> weight_scrub_regions(
    const std::vector<formats::GgufTensor>& tensors, const std::vector<ScrubRegion>& packed,
    const std::vector<std::string>& read_in_place = default_read_in_place());

// The regions of a loaded model: its file's tensors and its packed copies.
std::vector<ScrubRegion> weight_scrub_regions(const model::Model& m);

// The packed copies of a loaded model as regions (what fault injection can flip in memory).
std::vector<ScrubRegion> packed_copies(const model::Model& m);

}  // namespace fennec::ras
