#include "allocator.h"

#include <dlfcn.h>

#include <cstdint>

namespace kvalloc {
namespace {

using Mallctl = int (*)(const char*, void*, size_t*, void*, size_t);

Mallctl FindMallctl() {
  static const Mallctl found = reinterpret_cast<Mallctl>(dlsym(RTLD_DEFAULT, "mallctl"));
  return found;
}

size_t ReadSize(Mallctl mallctl, const char* name) {
  size_t value = 0;
  size_t length = sizeof(value);
  return mallctl(name, &value, &length, nullptr, 0) == 0 ? value : 0;
}

}  // namespace

Stats Read() {
  Stats stats;
  Mallctl mallctl = FindMallctl();
  if (mallctl == nullptr) {
    stats.name = "system";
    return stats;
  }
  stats.name = "jemalloc";
  const char* version = nullptr;
  size_t length = sizeof(version);
  if (mallctl("version", &version, &length, nullptr, 0) == 0 && version != nullptr) stats.version = version;
  // The stats.* counters are a snapshot taken when the epoch advances.
  uint64_t epoch = 1;
  length = sizeof(epoch);
  mallctl("epoch", &epoch, &length, &epoch, sizeof(epoch));
  stats.allocated = ReadSize(mallctl, "stats.allocated");
  stats.active = ReadSize(mallctl, "stats.active");
  stats.resident = ReadSize(mallctl, "stats.resident");
  return stats;
}

bool Purge() {
  Mallctl mallctl = FindMallctl();
  if (mallctl == nullptr) return false;
  // 4096 is MALLCTL_ARENAS_ALL: every arena at once.
  return mallctl("arena.4096.purge", nullptr, nullptr, nullptr, 0) == 0;
}

}  // namespace kvalloc
