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

struct Options {
  uint64_t bytesMax = 0;
  uint64_t segmentBytes = 64ull << 20;
  FsyncPolicy fsync = FsyncPolicy::kBatch;
  // Bytes appended between index checkpoints; bounds the tail replayed after a crash.
  uint64_t checkpointEveryBytes = 256ull << 20;
  uint32_t readThreads = 8;
  // Pinned blocks cannot be evicted; this cap keeps room for everything else.
  uint64_t pinnedBytesMax = 0;  // 0 = bytesMax / 2
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
// caller owns and releases with free().
struct ReadResult {
  Code code = Code::kNotFound;
  uint8_t* base = nullptr;
  uint32_t payloadBytes = 0;
  static constexpr size_t kPayloadOffset = sizeof(RecordHeader);
};

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
  uint64_t writeErrors = 0;
  uint64_t readErrors = 0;
  uint64_t capacityRejects = 0;
  uint64_t pinnedBlocks = 0;
  uint64_t pinnedBytes = 0;
  uint64_t compactions = 0;
  uint64_t relocatedBytes = 0;
  uint64_t checkpoints = 0;
  uint64_t replayedRecords = 0;
  uint64_t badRecords = 0;
  uint64_t truncatedBytes = 0;
  uint64_t indexRebuilds = 0;
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
  bool Has(const Key& key);
  // hard: never evicted until Unpin; otherwise evictable again after ttlMs.
  Code Pin(const Key& key, bool hard, uint64_t ttlMs);
  bool Unpin(const Key& key);
  std::vector<Key> Keys();
  Stats GetStats();
  // Waits for in-flight calls, writes a final checkpoint and releases the lock.
  void Close();
  const std::string& dir() const { return dir_; }

 private:
  struct Segment;
  struct Entry;
  struct ReadTask;

  Store(const std::string& dir, const Options& options);
  Code OpenImpl(std::string* message);
  Code LoadIndex(uint32_t* replaySegmentId, uint64_t* replayOffset, std::string* message);
  void ScanSegment(Segment* segment, uint64_t fromOffset);
  void ApplyRecovered(const RecordHeader& header, uint32_t segmentId, uint64_t offset);

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
  Code Roll();
  Code AppendRecord(const Key& key, uint16_t kind, const uint8_t* payload, uint32_t payloadBytes,
                    uint64_t seqNo, bool forCompaction, uint32_t* segmentId, uint64_t* offset);
  bool Checkpoint();
  void DeleteSegment(const std::shared_ptr<Segment>& segment);
  Code ReadVerified(const ReadTask& task, ReadResult* result);

  void StartReadPool();
  void StopReadPool();
  void RunParallel(size_t count, const std::function<void(size_t)>& work);

  const std::string dir_;
  const Options options_;
  int lockFd_ = -1;

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
