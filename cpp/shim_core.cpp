// The Mesos-independent half of the shim. See include/shim_core.hpp.
#include "mesos-gelf-logger/include/shim_core.hpp"

#include <atomic>
#include <cstdio>
#include <exception>

#include "mesos-gelf-logger/src/bridge.rs.h"

extern "C" void mesos_gelf_set_log(void (*)(int32_t, const uint8_t*, size_t));

namespace mesos_gelf {

namespace {
std::atomic<LogFn> g_log{nullptr};
}  // namespace

void agent_log(int32_t level, rust::Str msg) {
  LogFn f = g_log.load();
  if (f != nullptr) {
    f(level, msg);
  } else {
    std::string m(msg.data(), msg.size());
    std::fprintf(stderr, "mesos-gelf %c: %s\n", "IWE"[level < 0 || level > 2 ? 2 : level], m.c_str());
  }
}

namespace {
// What Rust calls for each log line (see mesos_gelf_set_log in bridge.rs).
extern "C" void logFromRust(int32_t level, const uint8_t* bytes, size_t len) {
  agent_log(level, rust::Str(reinterpret_cast<const char*>(bytes), len));
}
}  // namespace

ShimCore::ShimCore(rust::Box<ModuleLogger> logger) : logger_(std::move(logger)) {}

ShimCore::~ShimCore() = default;

std::unique_ptr<ShimCore> ShimCore::create(
    const std::vector<std::pair<std::string, std::string>>& params,
    LogFn log,
    std::string* error) {
  rust::Vec<Param> ps;
  for (const auto& kv : params) {
    ps.push_back(Param{rust::String(kv.first), rust::String(kv.second)});
  }
  g_log.store(log);
  mesos_gelf_set_log(&logFromRust);
  try {
    return std::unique_ptr<ShimCore>(new ShimCore(create_logger(ps)));
  } catch (const std::exception& e) {
    if (error != nullptr) *error = e.what();
    return nullptr;
  }
}

std::string ShimCore::initialize() {
  try {
    logger_->initialize();
    return "";
  } catch (const std::exception& e) {
    return e.what();
  }
}

std::string ShimCore::prepare(const std::string& containerId,
                              const std::string& configJson,
                              int* outFd,
                              int* errFd) {
  try {
    ContainerFds fds = logger_->prepare(containerId, configJson);
    *outFd = fds.out_fd;
    *errFd = fds.err_fd;
    return "";
  } catch (const std::exception& e) {
    return e.what();
  }
}

std::string ShimCore::metrics() const {
  return std::string(logger_->metrics_json());
}

std::vector<std::string> ShimCore::metricNames() const {
  std::vector<std::string> out;
  for (const rust::String& n : logger_->metric_names()) {
    out.emplace_back(std::string(n));
  }
  return out;
}

double ShimCore::metricValue(size_t index) const {
  return logger_->metric_value(index);
}

std::string joinContainerId(const std::vector<std::string>& chain) {
  std::string out;
  for (const auto& id : chain) {
    if (!out.empty()) out += '.';
    out += id;
  }
  return out;
}

}  // namespace mesos_gelf
