// What a coordinator or a node reports to its host (the CLI, the C API, the desktop app) while it
// runs. Events are delivered on the object's io thread, one at a time; a handler must not block long
// and must not call wait() or the destructor of the object that called it.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace distro::net {

struct NetEvent {
  enum class Kind {
    step_done,  // a round's update was applied (step = the step)
    joined,     // coordinator: a node joined; node: it joined the run
    left,       // coordinator: a node left or was cut off (message: why); node: it left
    error,      // something was refused or failed (message: what and why); the run goes on
    limit_hit,  // a rate cap held traffic back (message: which and how long)
    info,       // anything else worth a log line
  };
  Kind kind = Kind::info;
  uint64_t step = 0;
  std::string node;     // the node's name, when the event is about one
  std::string message;  // one line, for humans
};

const char* event_kind_name(NetEvent::Kind k);

using EventHandler = std::function<void(const NetEvent&)>;

}  // namespace distro::net
