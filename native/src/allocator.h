// The engine's memory allocator, seen from inside the process: which one serves malloc (jemalloc when
// the engine was started with it preloaded, else the C library's), its counters, and a purge that
// returns freed pages to the kernel. Found at run time with dlsym, so the addon links against neither.
#pragma once

#include <cstddef>
#include <string>

namespace kvalloc {

struct Stats {
  std::string name;     // "jemalloc" or "system"
  std::string version;  // jemalloc's version string; empty for the system allocator
  // jemalloc only (0 otherwise): bytes in live allocations, in pages the allocator holds for them
  // (active), and resident (also freed pages not yet returned to the kernel and its metadata).
  size_t allocated = 0;
  size_t active = 0;
  size_t resident = 0;
};

Stats Read();

// Returns every freed page to the kernel now, instead of after the allocator's decay time.
// False when the allocator is not jemalloc (nothing to do).
bool Purge();

}  // namespace kvalloc
