// C++ test driver that CI runs in place of a Mesos agent: it drives ShimCore
// exactly as cpp/logger.cpp does (parameters in, prepare per container,
// write to the returned fds, close them), then waits for the publisher.
//
// Spec: one directive per line, fields separated by TAB:
//   param  <key> <value>
//   container <id> <config-json-file> <stdout text> <stderr text>
//       (texts use \n for newlines)
//   wait_empty <spool dir> <timeout ms>     keep the logger alive until the
//                                           spool has no container left
// Result: one line per directive outcome, TAB-separated:
//   created | create_error <msg> | initialized | init_error <msg>
//   prepared <id> <out fd> <err fd> | prepare_error <id> <msg>
//   empty | not_empty
#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "mesos-gelf-logger/include/shim_core.hpp"

namespace mesos_gelf {
namespace {

std::vector<std::string> splitTabs(const std::string& line) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : line) {
    if (c == '\t') {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  out.push_back(cur);
  return out;
}

std::string unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size() && s[i + 1] == 'n') {
      out += '\n';
      ++i;
    } else {
      out += s[i];
    }
  }
  return out;
}

bool writeAll(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    ssize_t n = ::write(fd, s.data() + off, s.size() - off);
    if (n <= 0) return false;
    off += static_cast<size_t>(n);
  }
  return true;
}

bool spoolEmpty(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return true;
  bool empty = true;
  while (struct dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != ".." && e->d_type == DT_DIR) empty = false;
  }
  ::closedir(d);
  return empty;
}

void logToStderr(int32_t level, rust::Str msg) {
  std::string m(msg.data(), msg.size());
  fprintf(stderr, "selftest log %d: %s\n", level, m.c_str());
}

}  // namespace

std::string shim_selftest(const std::string& specText) {
  std::istringstream spec(specText);
  std::ostringstream out;
  std::vector<std::pair<std::string, std::string>> params;
  std::unique_ptr<ShimCore> core;
  std::string line;
  while (std::getline(spec, line)) {
    std::vector<std::string> f = splitTabs(line);
    if (f[0] == "param" && f.size() == 3) {
      params.emplace_back(f[1], f[2]);
      continue;
    }
    if (!core && (f[0] == "container" || f[0] == "init")) {
      std::string error;
      core = ShimCore::create(params, &logToStderr, &error);
      if (!core) {
        out << "create_error\t" << error << "\n";
        break;
      }
      out << "created\n";
      std::string e = core->initialize();
      out << (e.empty() ? "initialized" : "init_error\t" + e) << "\n";
    }
    if (f[0] == "container" && f.size() == 5) {
      std::ifstream in(f[2]);
      std::stringstream json;
      json << in.rdbuf();
      int outFd = -1, errFd = -1;
      std::string e = core->prepare(f[1], json.str(), &outFd, &errFd);
      if (!e.empty()) {
        out << "prepare_error\t" << f[1] << "\t" << e << "\n";
        continue;
      }
      out << "prepared\t" << f[1] << "\t" << outFd << "\t" << errFd << "\n";
      // What the agent does: the container writes, then exits.
      writeAll(outFd, unescape(f[3]));
      writeAll(errFd, unescape(f[4]));
      ::close(outFd);
      ::close(errFd);
    } else if (f[0] == "wait_empty" && f.size() == 3) {
      auto deadline = std::chrono::steady_clock::now() +
                      std::chrono::milliseconds(std::stol(f[2]));
      while (!spoolEmpty(f[1]) && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      out << (spoolEmpty(f[1]) ? "empty" : "not_empty") << "\n";
    }
  }
  return out.str();
}

}  // namespace mesos_gelf

// The C entry point tests call (tests/support): the report, malloc'd (the
// caller frees it). A C function the library itself never calls, so
// binaries that do not run this driver (the lean companion) link no C++.
extern "C" char* mesos_gelf_shim_selftest(const char* spec) {
  const std::string report = mesos_gelf::shim_selftest(spec);
  return ::strdup(report.c_str());
}
