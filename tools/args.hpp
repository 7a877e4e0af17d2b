// A small command-line parser: `--name value` and `--flag`, each declared up front, so an unknown or
// malformed option gets a message that names it and lists what is accepted.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace distro::cli {

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Args {
 public:
  // values: options that take a value; flags: options that take none.
  Args(const std::string& command, const std::vector<std::string>& argv, std::set<std::string> values,
       std::set<std::string> flags);
  bool flag(const std::string& name) const { return flags_.count(name) != 0; }
  bool has(const std::string& name) const { return values_.count(name) != 0; }
  std::string str(const std::string& name, const std::string& def) const;
  uint64_t u64(const std::string& name, uint64_t def, uint64_t min, uint64_t max) const;
  double real(const std::string& name, double def, double min, double max) const;

 private:
  std::string command_;
  std::map<std::string, std::string> values_;
  std::set<std::string> flags_;
};

}  // namespace distro::cli
