// The subcommands of `distro`. Each returns the process exit code: 0 success, 1 failure, 2 usage.
#pragma once

#include <string>
#include <vector>

namespace distro::cli {

int cmd_devices(const std::vector<std::string>& args);
int cmd_compress(const std::vector<std::string>& args);
int cmd_bench(const std::vector<std::string>& args);
int cmd_train(const std::vector<std::string>& args);
int cmd_serve(const std::vector<std::string>& args);
int cmd_node(const std::vector<std::string>& args);

}  // namespace distro::cli
