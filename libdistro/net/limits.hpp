// Upper bounds of every message, derived from the run (docs/network.md, "limits"). The transport
// refuses a frame above its kind's bound before reading its body, so a peer can never make the
// other side allocate more than these say. The wire bounds are safe over-estimates of the codec's
// largest possible message for a manifest (docs/protocol.md sections 4-6); the codec itself then
// checks the exact content.
#pragma once

#include <cstdint>

#include "net/frame.hpp"
#include "net/protocol.hpp"
#include "optim/manifest.hpp"

namespace distro::net {

// Largest encoded peer payload any peer can produce for this manifest.
uint64_t max_payload_bytes(const Manifest& m);
// Largest encoded merged update of at most `contributors` payloads.
uint64_t max_update_bytes(const Manifest& m, uint64_t contributors);
// Largest checkpoint (net/run_checkpoint.hpp) of a model with this many parameters.
uint64_t max_checkpoint_bytes(uint64_t params);

// What a coordinator accepts from a node of this run.
FrameLimits coordinator_frame_limits(const Manifest& m);
// What a node accepts from its coordinator. Before it knows the run (first connection) it uses
// protocol-wide caps; once it has the run's settings and manifest, the exact bounds of that run.
FrameLimits node_frame_limits();
FrameLimits node_frame_limits(const RunInfo& run, const Manifest& m);

}  // namespace distro::net
