// The Mesos ContainerLogger module: a thin adapter over ShimCore (Rust).
// Compiled only when build.rs finds a Mesos install (see README).
#pragma once

#include <memory>
#include <vector>

#include <mesos/mesos.hpp>
#include <mesos/slave/container_logger.hpp>
#include <mesos/slave/containerizer.hpp>

#include <process/future.hpp>
#include <process/metrics/pull_gauge.hpp>

#include <stout/nothing.hpp>
#include <stout/try.hpp>

#include "mesos-gelf-logger/include/shim_core.hpp"

namespace mesos_gelf {

class GelfContainerLogger : public mesos::slave::ContainerLogger {
 public:
  explicit GelfContainerLogger(std::unique_ptr<ShimCore> core);
  ~GelfContainerLogger() override;

  // Starts the publisher thread; resumes spools of containers that kept
  // running through an agent restart. Adds our gauges to the agent's
  // /metrics/snapshot under `containerizer/logger/gelf/`.
  Try<Nothing> initialize() override;

  // Metadata file, two pipes, the companion; returns the pipes' write ends.
  process::Future<mesos::slave::ContainerIO> prepare(
      const mesos::ContainerID& containerId,
      const mesos::slave::ContainerConfig& containerConfig) override;

 private:
  std::unique_ptr<ShimCore> core_;
  // Registered with libprocess; removed (and waited for) before core_ goes.
  std::vector<process::metrics::PullGauge> gauges_;
};

}  // namespace mesos_gelf
