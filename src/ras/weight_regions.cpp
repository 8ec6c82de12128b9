#include "ras/weight_regions.h"

#include <algorithm>
#include <unordered_map>

#include "formats/gguf.h"
#include "model/model.h"

namespace fennec::ras {

std::string packed_tensor_name(std::string_view region_name) {
  if (region_name.size() <= kPackedSuffix.size() || !region_name.ends_with(kPackedSuffix))
    return {};
  return std::string(region_name.substr(0, region_name.size() - kPackedSuffix.size()));
}

const std::vector<std::string>& default_read_in_place() {
  static const std::vector<std::string> names{"token_embd.weight"};
  return names;
}

std::vector<ScrubRegion> weight_scrub_regions(const std::vector<formats::GgufTensor>& tensors,
                                              const std::vector<ScrubRegion>& packed,
                                              const std::vector<std::string>& read_in_place) {
  std::unordered_map<std::string, size_t> copy_of;  // tensor name -> index in packed
  for (size_t i = 0; i < packed.size(); ++i) {
    const std::string t = packed_tensor_name(packed[i].name);
    if (!t.empty()) copy_of.emplace(t, i);
  }
  std::vector<bool> used(packed.size(), false);
  std::vector<ScrubRegion> out;
  out.reserve(tensors.size() + packed.size());
  for (const auto& t : tensors) {
    const auto it = copy_of.find(t.name);
    const bool in_place =
        std::find(read_in_place.begin(), read_in_place.end(), t.name) != read_in_place.end();
    if (it == copy_of.end() || in_place)
      out.push_back({t.name, t.data, static_cast<size_t>(t.n_bytes)});
    if (it != copy_of.end() && !used[it->second]) {
      out.push_back(packed[it->second]);
      used[it->second] = true;
    }
  }
  for (size_t i = 0; i < packed.size(); ++i)
    if (!used[i]) out.push_back(packed[i]);
  return out;
}

std::vector<ScrubRegion> packed_copies(const model::Model& m) {
  std::vector<ScrubRegion> out;
  for (const auto& r : m.packed_regions()) out.push_back({r.name, r.data, r.size});
  return out;
}

std::vector<ScrubRegion> weight_scrub_regions(const model::Model& m) {
  return weight_scrub_regions(m.gguf().tensors(), packed_copies(m));
}

}  // namespace fennec::ras
