#include "args.hpp"

#include <cerrno>
#include <cmath>
#include <cstdlib>

namespace distro::cli {

static std::string list(const std::set<std::string>& a, const std::set<std::string>& b) {
  std::string out;
  for (const auto* s : {&a, &b})
    for (const auto& n : *s) out += (out.empty() ? "" : ", ") + ("--" + n);
  return out.empty() ? "no options" : out;
}

Args::Args(const std::string& command, const std::vector<std::string>& argv, std::set<std::string> values,
           std::set<std::string> flags)
    : command_(command) {
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    if (a.rfind("--", 0) != 0)
      throw UsageError(command + ": unexpected argument '" + a + "'; expected options: " + list(values, flags));
    std::string name = a.substr(2), value;
    bool inline_value = false;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      inline_value = true;
    }
    if (flags.count(name)) {
      if (inline_value) throw UsageError(command + ": option --" + name + " takes no value");
      flags_.insert(name);
    } else if (values.count(name)) {
      if (!inline_value) {
        if (i + 1 >= argv.size()) throw UsageError(command + ": option --" + name + " needs a value");
        value = argv[++i];
      }
      values_[name] = value;
    } else {
      throw UsageError(command + ": unknown option '--" + name + "'; expected one of: " + list(values, flags));
    }
  }
}

std::string Args::str(const std::string& name, const std::string& def) const {
  auto it = values_.find(name);
  return it == values_.end() ? def : it->second;
}

uint64_t Args::u64(const std::string& name, uint64_t def, uint64_t min, uint64_t max) const {
  auto it = values_.find(name);
  if (it == values_.end()) return def;
  const std::string& s = it->second;
  char* end = nullptr;
  errno = 0;
  unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  if (s.empty() || s[0] == '-' || *end != '\0' || errno == ERANGE || v < min || v > max)
    throw UsageError(command_ + ": --" + name + " is '" + s + "'; expected a whole number from " +
                     std::to_string(min) + " to " + std::to_string(max));
  return v;
}

double Args::real(const std::string& name, double def, double min, double max) const {
  auto it = values_.find(name);
  if (it == values_.end()) return def;
  const std::string& s = it->second;
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (s.empty() || *end != '\0' || !std::isfinite(v) || v < min || v > max)
    throw UsageError(command_ + ": --" + name + " is '" + s + "'; expected a number from " + std::to_string(min) +
                     " to " + std::to_string(max));
  return v;
}

}  // namespace distro::cli
