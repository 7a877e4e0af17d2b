#include "wire/bits.hpp"

#include <string>

#include "core/error.hpp"

namespace distro::wire {

// Out of line: the throw path is cold and building the message pulls in <string>.
void BitReader::throw_truncated(uint64_t wanted, uint64_t pos, size_t bytes) {
  fail(Code::corrupt, "truncated: needed " + std::to_string(wanted) + " more bits at bit " + std::to_string(pos) +
                          " of a " + std::to_string(bytes) + "-byte piece");
}

}  // namespace distro::wire
