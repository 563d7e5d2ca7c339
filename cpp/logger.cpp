// The Mesos ContainerLogger module. Types in, types out: Mesos types become
// plain strings for ShimCore (Rust), Rust errors become Error/Failure, Rust
// log lines go to the agent's glog. Every decision is made in Rust.
#include "mesos-gelf-logger/include/logger.hpp"

#include <string>
#include <utility>
#include <vector>

#include <glog/logging.h>

#include <mesos/module.hpp>
#include <mesos/module/container_logger.hpp>
#include <mesos/version.hpp>

#include <process/future.hpp>
#include <process/metrics/metrics.hpp>
#include <process/metrics/pull_gauge.hpp>

#include <stout/duration.hpp>
#include <stout/error.hpp>
#include <stout/json.hpp>
#include <stout/protobuf.hpp>
#include <stout/stringify.hpp>

using mesos::ContainerID;
using mesos::Parameters;
using mesos::slave::ContainerConfig;
using mesos::slave::ContainerIO;
using mesos::slave::ContainerLogger;

namespace mesos_gelf {

namespace {

void glogLine(int32_t level, rust::Str msg) {
  const std::string m(msg.data(), msg.size());
  switch (level) {
    case 0:
      LOG(INFO) << "mesos-gelf: " << m;
      break;
    case 1:
      LOG(WARNING) << "mesos-gelf: " << m;
      break;
    default:
      LOG(ERROR) << "mesos-gelf: " << m;
      break;
  }
}

// The ContainerID chain, outermost first (nested containers have parents).
std::vector<std::string> containerChain(const ContainerID& id) {
  std::vector<std::string> chain;
  const ContainerID* cur = &id;
  while (true) {
    chain.insert(chain.begin(), cur->value());
    if (!cur->has_parent()) break;
    cur = &cur->parent();
  }
  return chain;
}

}  // namespace

GelfContainerLogger::GelfContainerLogger(std::unique_ptr<ShimCore> core)
  : core_(std::move(core)) {}

GelfContainerLogger::~GelfContainerLogger() {
  // A gauge's callback reads core_: it must be gone from libprocess before
  // core_ is destroyed.
  for (const process::metrics::PullGauge& gauge : gauges_) {
    process::metrics::remove(gauge).await(Seconds(5));
  }
}

Try<Nothing> GelfContainerLogger::initialize() {
  const std::string error = core_->initialize();
  if (!error.empty()) {
    return Error("mesos-gelf: " + error);
  }
  // One pull gauge per metric. The callback runs on a libprocess thread and
  // only loads an atomic in Rust: it never blocks nor takes the publisher's
  // locks. Names are fixed; per-container detail stays out (metrics.json).
  const ShimCore* core = core_.get();
  const std::vector<std::string> names = core_->metricNames();
  for (size_t i = 0; i < names.size(); ++i) {
    process::metrics::PullGauge gauge(
        "containerizer/logger/gelf/" + names[i],
        [core, i]() -> process::Future<double> {
          return core->metricValue(i);
        });
    process::Future<Nothing> added = process::metrics::add(gauge);
    added.await(Seconds(5));
    if (!added.isReady()) {
      // E.g. a second logger instance in one process: its names are taken.
      LOG(WARNING) << "mesos-gelf: cannot add metric " << gauge.name() << ": "
                   << (added.isFailed() ? added.failure() : "not added in 5 s");
      continue;
    }
    gauges_.push_back(gauge);
  }
  return Nothing();
}

process::Future<ContainerIO> GelfContainerLogger::prepare(
    const ContainerID& containerId,
    const ContainerConfig& containerConfig) {
  const std::string id = joinContainerId(containerChain(containerId));
  const std::string json = stringify(JSON::protobuf(containerConfig));
  int outFd = -1;
  int errFd = -1;
  const std::string error = core_->prepare(id, json, &outFd, &errFd);
  if (!error.empty()) {
    LOG(ERROR) << "mesos-gelf: " << error;
    return process::Failure("mesos-gelf: " + error);
  }
  ContainerIO io;
  io.out = ContainerIO::IO::FD(outFd, true);
  io.err = ContainerIO::IO::FD(errFd, true);
  return io;
}

}  // namespace mesos_gelf

namespace {

ContainerLogger* createGelfContainerLogger(const Parameters& parameters) {
  std::vector<std::pair<std::string, std::string>> params;
  for (int i = 0; i < parameters.parameter_size(); ++i) {
    params.emplace_back(
        parameters.parameter(i).key(), parameters.parameter(i).value());
  }
  std::string error;
  std::unique_ptr<mesos_gelf::ShimCore> core =
    mesos_gelf::ShimCore::create(params, &mesos_gelf::glogLine, &error);
  if (!core) {
    LOG(ERROR) << "mesos-gelf: cannot create the container logger: " << error;
    return nullptr;
  }
  LOG(INFO) << "mesos-gelf: module built for Mesos " << MESOS_GELF_BUILT_AGAINST;
  return new mesos_gelf::GelfContainerLogger(std::move(core));
}

}  // namespace

// The module global: its name is the module name in modules.json.
mesos::modules::Module<ContainerLogger> org_mesos_gelf_GelfContainerLogger(
    MESOS_MODULE_API_VERSION,
    MESOS_VERSION,
    "mesos-gelf-logger",
    "mesos-gelf-logger@users.noreply.github.com",
    "Keeps sandbox stdout/stderr and ships every line as GELF to Kafka.",
    nullptr,
    createGelfContainerLogger);
