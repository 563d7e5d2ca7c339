// The Mesos-independent half of the shim: everything cpp/logger.cpp does
// that does not need Mesos types. CI builds and tests it without Mesos.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "rust/cxx.h"

namespace mesos_gelf {

struct ModuleLogger;

// Log line from Rust: 0 info, 1 warning, 2 error.
using LogFn = void (*)(int32_t, rust::Str);

class ShimCore {
 public:
  // Validates parameters and creates the Rust logger. On failure returns
  // nullptr and sets *error (the message names the parameter).
  static std::unique_ptr<ShimCore> create(
      const std::vector<std::pair<std::string, std::string>>& params,
      LogFn log,
      std::string* error);

  // "" on success, else the error message.
  std::string initialize();

  // Sets up one container. `containerId` is the ContainerID chain joined
  // with '.', outermost first. On success returns "" and sets the fds (the
  // caller owns them); otherwise returns the error message.
  std::string prepare(const std::string& containerId,
                      const std::string& configJson,
                      int* outFd,
                      int* errFd);

  std::string metrics() const;

  // The agent metrics: names (without prefix), and one value by index.
  // metricValue only loads an atomic: safe on any thread, never blocks.
  std::vector<std::string> metricNames() const;
  double metricValue(size_t index) const;

  ~ShimCore();

 private:
  explicit ShimCore(rust::Box<ModuleLogger> logger);
  rust::Box<ModuleLogger> logger_;
};

// Joins a ContainerID chain (outermost first) as the Rust side expects.
std::string joinContainerId(const std::vector<std::string>& chain);

// Our log lines (called from Rust, any thread): forwards to the LogFn given
// to ShimCore::create (glog in the module), or to stderr.
void agent_log(int32_t level, rust::Str msg);

// C++ test driver run by CI in place of a Mesos agent (cpp/shim_selftest.cpp);
// tests call it through `extern "C" mesos_gelf_shim_selftest`.
std::string shim_selftest(const std::string& spec);

}  // namespace mesos_gelf
