// Crash-safe SSD block store: the pure C++ core, with no Node-API in it, so it
// can be tested and sanitized without Node. See native/FORMAT.md for the bytes.
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "format.h"

struct iovec;

namespace kvstore {

// Stable result codes; the TypeScript facade maps them to KV_* names.
enum class Code : int32_t {
  kOk = 0,
  kNotFound = 1,
  kCorrupt = 2,
  kCapacity = 3,
  kIo = 4,
  kLocked = 5,
  kFormat = 6,
  kClosed = 7,
};
const char* CodeName(Code code);

struct Key {
  std::array<uint8_t, kKeyBytes> bytes;
  bool operator==(const Key& other) const { return bytes == other.bytes; }
};
struct KeyHash {
  size_t operator()(const Key& key) const;
};

enum class FsyncPolicy { kBatch, kNone };

// ---- Test-only fault injection ---------------------------------------------------
// Every write-side system call the store makes on its files goes through one seam
// that asks the store's FaultInjector (if any) whether to fail. A spec is rules
// separated by ';', each a comma-separated list of key=value (FORMAT.md, "Fault
// injection"):
//   op=write|sync|create|truncate|rename|any   file=segment|index|lock|dir|any
//   skip=N   matching calls that pass first (default 0)
//   count=N|all   matching calls that fail after those (default 1)
//   errno=ENOSPC|EIO|<name>|<number>   bytes=N   a failing write first puts N bytes down
enum class IoOp : uint8_t { kWrite, kSync, kCreate, kTruncate, kRename };
enum class FileKind : uint8_t { kSegment, kIndex, kLock, kDir };

class FaultInjector {
 public:
  // nullptr with *error set for a malformed spec; an empty spec parses to no rules.
  static std::shared_ptr<FaultInjector> Parse(const std::string& spec, std::string* error);
  // The errno this call fails with, or 0. *tornBytes: what a failing write still writes.
  int Hit(IoOp op, FileKind file, uint64_t* tornBytes);
  bool empty() const { return rules_.empty(); }

 private:
  struct Rule {
    int op = -1;    // -1 = any
    int file = -1;  // -1 = any
    uint64_t skip = 0;
    uint64_t count = 1;
    bool forever = false;
    int err = 0;
    uint64_t bytes = 0;
    uint64_t seen = 0;
  };
  std::mutex mu_;
  std::vector<Rule> rules_;
};

struct Options {
  uint64_t bytesMax = 0;
  uint64_t segmentBytes = 64ull << 20;
  FsyncPolicy fsync = FsyncPolicy::kBatch;
  // Bytes appended between index checkpoints; bounds the tail replayed after a crash.
  uint64_t checkpointEveryBytes = 256ull << 20;
  uint32_t readThreads = 8;
  // Pinned blocks cannot be evicted; this cap keeps room for everything else.
  uint64_t pinnedBytesMax = 0;  // 0 = bytesMax / 2
  // Wall clock for soft-pin expiry, Unix ms; empty = the system clock. Called with
  // store mutexes held, from any thread: it must be cheap and must not call back.
  std::function<uint64_t()> clock;
  // Test-only: fails the store's own file I/O from the first call on (also during open).
  std::shared_ptr<FaultInjector> faults;
};

// Smallest bytesMax that leaves a usable write budget next to the compaction reserve.
uint64_t MinBytesMax(uint64_t segmentBytes);
// Largest payload a store with this segment size accepts.
uint64_t MaxPayloadBytes(uint64_t segmentBytes);

struct OpenError {
  Code code = Code::kOk;
  std::string message;
};

struct WriteOp {
  Key key;
  const uint8_t* payload = nullptr;
  uint32_t payloadBytes = 0;
  bool isDelete = false;
};

// A verified read. The payload starts kPayloadOffset bytes into `base`, which the
// caller owns and releases with free(); or, read by GetManyInto into its arena, at
// arenaOffset there, and base is null.
struct ReadResult {
  Code code = Code::kNotFound;
  uint8_t* base = nullptr;
  uint32_t payloadBytes = 0;
  uint64_t arenaOffset = kNotInArena;
  static constexpr size_t kPayloadOffset = sizeof(RecordHeader);
  static constexpr uint64_t kNotInArena = ~0ull;
};

// GetManyInto starts every payload in its arena at an address that is a multiple of
// this, as GetMany's are (malloc's alignment).
constexpr size_t kArenaAlign = 16;

struct Stats {
  uint64_t bytes = 0;  // on disk, counted in whole 4 KiB blocks per file
  uint64_t bytesMax = 0;
  uint64_t liveBytes = 0;  // record bytes of indexed blocks
  uint64_t blocks = 0;
  uint64_t segments = 0;
  uint64_t hits = 0;
  uint64_t misses = 0;
  uint64_t evictions = 0;
  uint64_t corruptions = 0;
  uint64_t writeErrors = 0;  // = the three below
  uint64_t writeErrorsEnospc = 0;
  uint64_t writeErrorsEio = 0;
  uint64_t writeErrorsOther = 0;
  uint64_t readErrors = 0;
  uint64_t capacityRejects = 0;
  uint64_t pinnedBlocks = 0;
  uint64_t pinnedBytes = 0;
  uint64_t compactions = 0;
  uint64_t relocatedBytes = 0;
  uint64_t checkpoints = 0;
  uint64_t replayedRecords = 0;
  uint64_t badRecords = 0;
  uint64_t skippedBytes = 0;  // passed over by replay to reach the next verifiable record
  uint64_t truncatedBytes = 0;
  uint64_t indexRebuilds = 0;
  uint64_t quarantinedSegments = 0;  // *.quarantined segment files in the directory
  std::vector<std::string> quarantinedFiles;
  std::vector<std::string> openWarnings;  // what open found and did, one line each
  uint64_t queueDepth = 0;
  uint64_t blocksWritten = 0;
  uint64_t openMs = 0;
};

class Store {
 public:
  static std::shared_ptr<Store> Open(const std::string& dir, const Options& options, OpenError* error);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // Appends blocks and tombstones as one group commit: under FsyncPolicy::kBatch
  // one fdatasync covers the whole batch, and an entry reports kOk only after it.
  std::vector<Code> Write(const std::vector<WriteOp>& ops);
  // Reads and verifies many blocks with parallel preads.
  std::vector<ReadResult> GetMany(const std::vector<Key>& keys);
  // GetMany into caller-owned memory: payloads go into `arena`, in key order, each at the
  // next kArenaAlign-aligned address; one that no longer fits is read as GetMany reads
  // it. The arena must stay valid, and untouched by others, until this returns.
  std::vector<ReadResult> GetManyInto(const std::vector<Key>& keys, uint8_t* arena, size_t arenaBytes);
  bool Has(const Key& key);
  // hard: never evicted until Unpin; otherwise evictable again after ttlMs.
  Code Pin(const Key& key, bool hard, uint64_t ttlMs);
  bool Unpin(const Key& key);
  std::vector<Key> Keys();
  Stats GetStats();
  // Test-only: replaces the fault injector (nullptr removes it).
  void SetFaults(std::shared_ptr<FaultInjector> faults);
  // Waits for in-flight calls, writes a final checkpoint and releases the lock.
  void Close();
  const std::string& dir() const { return dir_; }

 private:
  struct Segment;
  struct Entry;
  struct ReadTask;
  struct IndexFile;

  Store(const std::string& dir, const Options& options);
  Code OpenImpl(std::string* message);
  Code TakeLock(std::string* message);
  std::string DescribeLockHolder();
  void WriteLockPid();
  Code ReadIndexFile(IndexFile* index, std::string* message);
  bool ApplyIndex(const IndexFile& index, std::string* reason);
  void Quarantine(const std::shared_ptr<Segment>& segment, const std::string& reason);
  void ScanSegment(Segment* segment, uint64_t fromOffset, bool newest);
  void ApplyRecovered(const RecordHeader& header, uint32_t segmentId, uint64_t offset);

  uint64_t Now() const;
  void CountWriteErrorLocked(int err, uint64_t count = 1);
  uint64_t DiskBytesLocked() const;

  // The write-side file I/O, each a seam for the fault injector; they return 0 or an errno.
  std::shared_ptr<FaultInjector> Faults();
  int IoWrite(int fd, struct iovec* iov, int iovCount, uint64_t offset, FileKind file);
  int IoSync(int fd, FileKind file);
  int IoCreate(const std::string& path, int flags, FileKind file, int* fd);
  int IoTruncate(int fd, uint64_t bytes, FileKind file);
  int IoRename(const std::string& from, const std::string& to, FileKind file);
  int IoSyncDir();

  bool Enter();
  void Leave();

  // All *Locked methods expect metaMu_ held.
  uint64_t IndexReserveLocked(uint64_t entriesAdded) const;
  uint64_t WriteBudgetLocked(uint64_t entriesAdded) const;
  uint64_t CompactBudgetLocked() const;
  bool IsPinnedLocked(const Entry& entry, uint64_t nowMs) const;
  void LinkMruLocked(Entry* entry);
  void UnlinkLocked(Entry* entry);
  void DropLocked(Entry* entry);
  // Evicts unpinned blocks, least recent first, down to the target; false when none are left.
  bool EvictLruLocked(uint64_t liveTargetBytes);

  bool MakeRoom(uint64_t extraBytes, uint64_t entriesAdded);
  bool ReclaimEmptySegments();
  bool CompactOne(std::set<uint32_t>* stuck);
  Code Roll(int* err);
  Code AppendRecord(const Key& key, uint16_t kind, const uint8_t* payload, uint32_t payloadBytes,
                    uint64_t seqNo, bool forCompaction, uint32_t* segmentId, uint64_t* offset);
  bool Checkpoint();
  void DeleteSegment(const std::shared_ptr<Segment>& segment);
  Code ReadVerified(const ReadTask& task, uint8_t* into, ReadResult* result);

  void StartReadPool();
  void StopReadPool();
  void RunParallel(size_t count, const std::function<void(size_t)>& work);

  const std::string dir_;
  const Options options_;
  int lockFd_ = -1;

  std::mutex faultsMu_;
  std::shared_ptr<FaultInjector> faults_;

  std::mutex closeMu_;
  std::mutex lifeMu_;
  std::condition_variable lifeCv_;
  uint64_t inflight_ = 0;
  bool closed_ = false;

  // Serializes writers: appends, compaction and checkpoints happen one at a time.
  std::mutex writeMu_;

  // Guards everything below. Never held across payload I/O.
  mutable std::mutex metaMu_;
  std::unordered_map<Key, std::unique_ptr<Entry>, KeyHash> index_;
  bool metaClosed_ = false;
  std::unique_ptr<Entry> lru_;  // sentinel of a circular list, least recent first
  std::unordered_set<Entry*> pinned_;
  std::map<uint32_t, std::shared_ptr<Segment>> segments_;
  std::shared_ptr<Segment> active_;
  uint32_t nextSegmentId_ = 1;
  uint64_t nextSeqNo_ = 1;
  uint64_t accessTick_ = 1;
  uint64_t segmentFileBytes_ = 0;  // rounded sizes of all segment files
  uint64_t indexFileBytes_ = 0;    // rounded size of INDEX
  uint64_t tmpIndexBytes_ = 0;     // rounded size of INDEX.tmp while it exists
  uint64_t otherFileBytes_ = 0;    // rounded sizes of LOCK and quarantined segments
  uint64_t liveBytes_ = 0;
  uint64_t pendingBytes_ = 0;  // appended, not yet committed
  uint64_t pendingNewKeys_ = 0;
  uint32_t checkpointReplaySegmentId_ = 1;
  uint64_t checkpointReplayOffset_ = 0;
  bool havePendingStart_ = false;
  uint32_t pendingStartSegmentId_ = 0;
  uint64_t pendingStartOffset_ = 0;
  uint64_t bytesSinceCheckpoint_ = 0;
  bool dirtySinceCheckpoint_ = false;
  Stats stats_;

  // Read pool: GetMany splits its keys among these threads and its own.
  std::mutex poolMu_;
  std::condition_variable poolCv_;
  std::vector<std::function<void()>> poolJobs_;
  std::vector<std::thread> poolThreads_;
  bool poolStop_ = false;
};

uint64_t ChecksumRecord(const RecordHeader& header, const uint8_t* payload, size_t payloadBytes);

}  // namespace kvstore
