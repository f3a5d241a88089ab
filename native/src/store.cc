#include "store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <signal.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <sstream>

namespace kvstore {

namespace {

constexpr uint64_t kRecordHeaderBytes = sizeof(RecordHeader);
constexpr uint64_t kSegmentHeaderBytes = sizeof(SegmentHeader);
// Extra bytes a single append may add on disk beyond its record: rounding of the
// active file and the header block of a freshly rolled segment.
constexpr uint64_t kAppendSlackBytes = 2 * kFileAlignBytes;
constexpr uint64_t kScanChunkBytes = 4ull << 20;
constexpr int kMakeRoomRoundsMax = 100000;
constexpr uint64_t kCompactDeadBytesMin = 4 * kFileAlignBytes;

uint64_t NowMs() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

uint64_t SteadyMs() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

std::string ErrnoText(const std::string& what, int err) {
  return what + ": " + std::strerror(err);
}

// Returns 0 or an errno; a short read at end of file reports EIO-free 0 with
// *readBytes < count so callers can tell truncation from I/O errors.
int PreadFull(int fd, void* buffer, size_t count, uint64_t offset, size_t* readBytes) {
  size_t done = 0;
  auto* out = static_cast<uint8_t*>(buffer);
  while (done < count) {
    ssize_t n = ::pread(fd, out + done, count - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      *readBytes = done;
      return errno;
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  *readBytes = done;
  return 0;
}

// Steps an iovec array past `bytes` transferred by a partial preadv/pwritev.
void AdvanceIov(struct iovec** iov, int* iovCount, size_t bytes) {
  while (*iovCount > 0 && bytes >= (*iov)->iov_len) {
    bytes -= (*iov)->iov_len;
    ++*iov;
    --*iovCount;
  }
  if (*iovCount > 0) {
    (*iov)->iov_base = static_cast<uint8_t*>((*iov)->iov_base) + bytes;
    (*iov)->iov_len -= bytes;
  }
}

// PreadFull over several buffers.
int PreadvFull(int fd, struct iovec* iov, int iovCount, uint64_t offset, size_t* readBytes) {
  size_t done = 0;
  while (iovCount > 0) {
    ssize_t n = ::preadv(fd, iov, iovCount, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      *readBytes = done;
      return errno;
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
    AdvanceIov(&iov, &iovCount, static_cast<size_t>(n));
  }
  *readBytes = done;
  return 0;
}

int PwritevFull(int fd, struct iovec* iov, int iovCount, uint64_t offset) {
  while (iovCount > 0) {
    ssize_t n = ::pwritev(fd, iov, iovCount, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (n == 0) return EIO;
    offset += static_cast<uint64_t>(n);
    AdvanceIov(&iov, &iovCount, static_cast<size_t>(n));
  }
  return 0;
}

int FsyncDir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return errno;
  int rc = ::fsync(fd) == 0 ? 0 : errno;
  ::close(fd);
  return rc;
}

std::string SegmentName(uint32_t id) {
  char name[32];
  std::snprintf(name, sizeof(name), "seg-%08x.kvs", id);
  return name;
}

bool ParseSegmentName(const char* name, uint32_t* id) {
  unsigned value = 0;
  char tail = 0;
  if (std::strlen(name) != 16) return false;
  if (std::sscanf(name, "seg-%8x.kvs%c", &value, &tail) != 1) return false;
  if (SegmentName(value) != name) return false;
  *id = value;
  return true;
}

constexpr char kQuarantineSuffix[] = ".quarantined";

// "seg-XXXXXXXX.kvs.quarantined", optionally followed by "-N" when the name was taken.
bool ParseQuarantinedName(const char* name, uint32_t* id) {
  size_t length = std::strlen(name);
  size_t suffix = sizeof(kQuarantineSuffix) - 1;
  if (length < 16 + suffix) return false;
  std::string segment(name, 16);
  if (!ParseSegmentName(segment.c_str(), id)) return false;
  if (std::strncmp(name + 16, kQuarantineSuffix, suffix) != 0) return false;
  for (size_t i = 16 + suffix; i < length; ++i) {
    if (i == 16 + suffix ? name[i] != '-' : (name[i] < '0' || name[i] > '9')) return false;
  }
  return true;
}

bool FileExists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

uint64_t FileRoundedBytes(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return 0;
  return RoundUpToBlock(static_cast<uint64_t>(st.st_size));
}

struct ErrnoName {
  const char* name;
  int value;
};
constexpr ErrnoName kErrnoNames[] = {
    {"ENOSPC", ENOSPC}, {"EIO", EIO},       {"EDQUOT", EDQUOT}, {"EROFS", EROFS},   {"EFBIG", EFBIG},
    {"EACCES", EACCES}, {"EPERM", EPERM},   {"EBADF", EBADF},   {"EINVAL", EINVAL}, {"ENOENT", ENOENT},
    {"EEXIST", EEXIST}, {"EMFILE", EMFILE}, {"ENFILE", ENFILE}, {"ENOMEM", ENOMEM}, {"ETIMEDOUT", ETIMEDOUT},
};

bool ParseUnsigned(const std::string& text, uint64_t* value) {
  if (text.empty() || text.size() > 18) return false;
  uint64_t out = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    out = out * 10 + static_cast<uint64_t>(c - '0');
  }
  *value = out;
  return true;
}

std::string Trim(const std::string& text) {
  size_t begin = text.find_first_not_of(" \t\n");
  if (begin == std::string::npos) return "";
  size_t end = text.find_last_not_of(" \t\n");
  return text.substr(begin, end - begin + 1);
}

uint64_t ChecksumHeader(const void* header, size_t bytes) { return XXH3_64bits(header, bytes); }

bool AllZero(const uint8_t* bytes, size_t count) {
  for (size_t i = 0; i < count; ++i)
    if (bytes[i] != 0) return false;
  return true;
}

uint64_t IndexFileBytes(uint64_t entries) { return sizeof(IndexHeader) + entries * sizeof(IndexEntry); }

}  // namespace

uint64_t ChecksumRecord(const RecordHeader& header, const uint8_t* payload, size_t payloadBytes) {
  XXH3_state_t* state = XXH3_createState();
  if (state == nullptr) std::abort();  // out of memory is not an operating error we can count
  XXH3_64bits_reset(state);
  XXH3_64bits_update(state, &header, kRecordChecksummedHeaderBytes);
  if (payloadBytes > 0) XXH3_64bits_update(state, payload, payloadBytes);
  uint64_t digest = XXH3_64bits_digest(state);
  XXH3_freeState(state);
  return digest;
}

const char* CodeName(Code code) {
  switch (code) {
    case Code::kOk: return "OK";
    case Code::kNotFound: return "KV_NOT_FOUND";
    case Code::kCorrupt: return "KV_CORRUPT";
    case Code::kCapacity: return "KV_CAPACITY";
    case Code::kIo: return "KV_IO";
    case Code::kLocked: return "KV_LOCKED";
    case Code::kFormat: return "KV_FORMAT";
    case Code::kClosed: return "KV_CLOSED";
  }
  return "KV_UNKNOWN";
}

size_t KeyHash::operator()(const Key& key) const {
  // Keys are usually hashes already, but nothing guarantees it; XXH3 of 32 bytes is a few ns.
  return static_cast<size_t>(XXH3_64bits(key.bytes.data(), key.bytes.size()));
}

std::shared_ptr<FaultInjector> FaultInjector::Parse(const std::string& spec, std::string* error) {
  static const char* const kOps[] = {"write", "sync", "create", "truncate", "rename"};
  static const char* const kFiles[] = {"segment", "index", "lock", "dir"};
  auto injector = std::make_shared<FaultInjector>();
  std::stringstream rules(spec);
  std::string ruleText;
  while (std::getline(rules, ruleText, ';')) {
    if (Trim(ruleText).empty()) continue;
    Rule rule;
    bool haveErrno = false;
    std::stringstream fields(ruleText);
    std::string field;
    while (std::getline(fields, field, ',')) {
      field = Trim(field);
      if (field.empty()) continue;
      size_t eq = field.find('=');
      if (eq == std::string::npos) {
        *error = "fault rule field '" + field + "' is not key=value";
        return nullptr;
      }
      std::string key = Trim(field.substr(0, eq));
      std::string value = Trim(field.substr(eq + 1));
      bool ok = true;
      if (key == "op" || key == "file") {
        const char* const* names = key == "op" ? kOps : kFiles;
        size_t count = key == "op" ? sizeof(kOps) / sizeof(kOps[0]) : sizeof(kFiles) / sizeof(kFiles[0]);
        int found = value == "any" ? -1 : -2;
        for (size_t i = 0; i < count; ++i)
          if (value == names[i]) found = static_cast<int>(i);
        ok = found != -2;
        (key == "op" ? rule.op : rule.file) = found;
      } else if (key == "skip") {
        ok = ParseUnsigned(value, &rule.skip);
      } else if (key == "count") {
        if (value == "all") {
          rule.forever = true;
        } else {
          ok = ParseUnsigned(value, &rule.count);
        }
      } else if (key == "bytes") {
        ok = ParseUnsigned(value, &rule.bytes);
      } else if (key == "errno") {
        uint64_t number = 0;
        if (ParseUnsigned(value, &number)) {
          rule.err = number > 0 && number < 4096 ? static_cast<int>(number) : 0;
        } else {
          for (const ErrnoName& item : kErrnoNames)
            if (value == item.name) rule.err = item.value;
        }
        ok = rule.err != 0 && rule.err != EINTR;
        haveErrno = ok;
      } else {
        *error = "unknown fault rule key '" + key + "'";
        return nullptr;
      }
      if (!ok) {
        *error = "bad value '" + value + "' for fault rule key '" + key + "'";
        return nullptr;
      }
    }
    if (!haveErrno) {
      *error = "fault rule '" + Trim(ruleText) + "' has no errno";
      return nullptr;
    }
    injector->rules_.push_back(rule);
  }
  return injector;
}

int FaultInjector::Hit(IoOp op, FileKind file, uint64_t* tornBytes) {
  std::lock_guard<std::mutex> lock(mu_);
  int err = 0;
  for (Rule& rule : rules_) {
    if (rule.op != -1 && rule.op != static_cast<int>(op)) continue;
    if (rule.file != -1 && rule.file != static_cast<int>(file)) continue;
    rule.seen += 1;
    bool fires = rule.seen > rule.skip && (rule.forever || rule.seen - rule.skip <= rule.count);
    if (fires && err == 0) {
      err = rule.err;
      *tornBytes = rule.bytes;
    }
  }
  return err;
}

uint64_t MaxPayloadBytes(uint64_t segmentBytes) {
  uint64_t room = segmentBytes - kSegmentHeaderBytes - kRecordHeaderBytes;
  return std::min<uint64_t>(room, kPayloadBytesLimit);
}

uint64_t MinBytesMax(uint64_t segmentBytes) {
  // The compaction reserve (one segment) plus room for two segments of live data.
  return 4 * segmentBytes;
}

struct Store::Segment {
  uint32_t id = 0;
  int fd = -1;
  std::string path;
  uint64_t sizeBytes = 0;
  uint64_t liveBytes = 0;
  uint64_t liveCount = 0;
  uint64_t pendingRecords = 0;
  bool sealed = false;
  bool syncFailed = false;  // written and read only by the single writer
  int syncErrno = 0;        // why it failed
  ~Segment() {
    if (fd >= 0) ::close(fd);
  }
};

struct Store::Entry {
  Key key;
  uint32_t segmentId = 0;
  uint32_t payloadBytes = 0;
  uint64_t offset = 0;
  uint64_t seqNo = 0;
  uint64_t accessTick = 0;
  uint64_t pinUntilMs = 0;
  bool hardPin = false;
  Entry* prev = nullptr;
  Entry* next = nullptr;
  uint64_t recordBytes() const { return kRecordHeaderBytes + payloadBytes; }
};

struct Store::ReadTask {
  Key key;
  std::shared_ptr<Segment> segment;
  uint64_t offset = 0;
  uint32_t payloadBytes = 0;
  uint64_t seqNo = 0;
};

Store::Store(const std::string& dir, const Options& options)
    : dir_(dir), options_(options), faults_(options.faults) {
  lru_ = std::make_unique<Entry>();
  lru_->prev = lru_.get();
  lru_->next = lru_.get();
  stats_.bytesMax = options_.bytesMax;
}

std::shared_ptr<Store> Store::Open(const std::string& dir, const Options& options, OpenError* error) {
  // Invalid options are programmer errors: the facade validates them first.
  assert(options.segmentBytes >= 64 * 1024);
  assert(options.bytesMax >= MinBytesMax(options.segmentBytes));
  assert(options.readThreads >= 1 && options.readThreads <= 64);
  Options effective = options;
  if (effective.pinnedBytesMax == 0) effective.pinnedBytesMax = effective.bytesMax / 2;
  std::shared_ptr<Store> store(new Store(dir, effective));
  uint64_t startMs = SteadyMs();
  std::string message;
  Code code = store->OpenImpl(&message);
  if (code != Code::kOk) {
    error->code = code;
    error->message = message;
    store->closed_ = true;  // nothing in flight yet; the destructor only releases resources
    return nullptr;
  }
  store->stats_.openMs = SteadyMs() - startMs;
  store->StartReadPool();
  return store;
}

Store::~Store() { Close(); }

uint64_t Store::Now() const { return options_.clock ? options_.clock() : NowMs(); }

void Store::CountWriteErrorLocked(int err, uint64_t count) {
  stats_.writeErrors += count;
  if (err == ENOSPC) {
    stats_.writeErrorsEnospc += count;
  } else if (err == EIO) {
    stats_.writeErrorsEio += count;
  } else {
    stats_.writeErrorsOther += count;
  }
}

uint64_t Store::DiskBytesLocked() const { return segmentFileBytes_ + indexFileBytes_ + otherFileBytes_; }

// ---- file I/O seams -----------------------------------------------------------

void Store::SetFaults(std::shared_ptr<FaultInjector> faults) {
  std::lock_guard<std::mutex> lock(faultsMu_);
  faults_ = std::move(faults);
}

std::shared_ptr<FaultInjector> Store::Faults() {
  std::lock_guard<std::mutex> lock(faultsMu_);
  return faults_;
}

int Store::IoWrite(int fd, struct iovec* iov, int iovCount, uint64_t offset, FileKind file) {
  if (auto faults = Faults()) {
    uint64_t torn = 0;
    if (int err = faults->Hit(IoOp::kWrite, file, &torn)) {
      // A torn write: the first `torn` bytes reach the file, then the call fails.
      std::vector<struct iovec> part;
      for (int i = 0; i < iovCount && torn > 0; ++i) {
        size_t take = static_cast<size_t>(std::min<uint64_t>(torn, iov[i].iov_len));
        part.push_back({iov[i].iov_base, take});
        torn -= take;
      }
      if (!part.empty()) PwritevFull(fd, part.data(), static_cast<int>(part.size()), offset);
      return err;
    }
  }
  return PwritevFull(fd, iov, iovCount, offset);
}

int Store::IoSync(int fd, FileKind file) {
  uint64_t ignored = 0;
  if (auto faults = Faults())
    if (int err = faults->Hit(IoOp::kSync, file, &ignored)) return err;
  return ::fdatasync(fd) == 0 ? 0 : errno;
}

int Store::IoCreate(const std::string& path, int flags, FileKind file, int* fd) {
  uint64_t ignored = 0;
  if (auto faults = Faults())
    if (int err = faults->Hit(IoOp::kCreate, file, &ignored)) return err;
  *fd = ::open(path.c_str(), flags | O_CREAT | O_CLOEXEC, 0644);
  return *fd >= 0 ? 0 : errno;
}

int Store::IoTruncate(int fd, uint64_t bytes, FileKind file) {
  uint64_t ignored = 0;
  if (auto faults = Faults())
    if (int err = faults->Hit(IoOp::kTruncate, file, &ignored)) return err;
  return ::ftruncate(fd, static_cast<off_t>(bytes)) == 0 ? 0 : errno;
}

int Store::IoRename(const std::string& from, const std::string& to, FileKind file) {
  uint64_t ignored = 0;
  if (auto faults = Faults())
    if (int err = faults->Hit(IoOp::kRename, file, &ignored)) return err;
  return ::rename(from.c_str(), to.c_str()) == 0 ? 0 : errno;
}

int Store::IoSyncDir() {
  uint64_t ignored = 0;
  if (auto faults = Faults())
    if (int err = faults->Hit(IoOp::kSync, FileKind::kDir, &ignored)) return err;
  return FsyncDir(dir_);
}

// Everything open learns from INDEX before it changes anything.
struct Store::IndexFile {
  bool present = false;
  bool valid = false;  // passed every check; otherwise ignored as a whole
  std::string reason;  // why it was ignored
  IndexHeader header;
  std::vector<IndexEntry> entries;
  uint64_t fileBytes = 0;
};

Code Store::OpenImpl(std::string* message) {
  if (::mkdir(dir_.c_str(), 0755) != 0 && errno != EEXIST) {
    *message = ErrnoText("mkdir " + dir_, errno);
    return Code::kIo;
  }
  Code locked = TakeLock(message);
  if (locked != Code::kOk) return locked;

  DIR* listing = ::opendir(dir_.c_str());
  if (listing == nullptr) {
    *message = ErrnoText("opendir " + dir_, errno);
    return Code::kIo;
  }
  std::vector<uint32_t> segmentIds;
  std::vector<std::string> quarantinedBefore;
  bool haveIndex = false;
  bool haveIndexTmp = false;
  uint32_t maxSegmentId = 0;
  while (struct dirent* item = ::readdir(listing)) {
    uint32_t id = 0;
    if (ParseSegmentName(item->d_name, &id)) segmentIds.push_back(id);
    if (ParseQuarantinedName(item->d_name, &id)) {
      // Its id stays taken: a new segment never reuses a quarantined one's name.
      quarantinedBefore.push_back(item->d_name);
      maxSegmentId = std::max(maxSegmentId, id);
    }
    if (std::strcmp(item->d_name, "INDEX") == 0) haveIndex = true;
    if (std::strcmp(item->d_name, "INDEX.tmp") == 0) haveIndexTmp = true;
  }
  ::closedir(listing);
  std::sort(segmentIds.begin(), segmentIds.end());
  std::sort(quarantinedBefore.begin(), quarantinedBefore.end());
  uint32_t newestId = segmentIds.empty() ? 0 : segmentIds.back();

  // Pass 1 reads every header and INDEX and changes nothing, so that a directory
  // written by a newer format is refused untouched. A header is "newer" only when
  // its magic and its checksum verify (FORMAT.md, "Versions"); anything else that
  // fails is damage.
  struct Found {
    std::shared_ptr<Segment> segment;
    std::string damage;  // empty = usable
    bool shortFile = false;
  };
  std::vector<Found> found;
  for (uint32_t id : segmentIds) {
    Found item;
    item.segment = std::make_shared<Segment>();
    Segment& segment = *item.segment;
    segment.id = id;
    segment.path = dir_ + "/" + SegmentName(id);
    segment.sealed = true;
    segment.fd = ::open(segment.path.c_str(), O_RDWR | O_CLOEXEC);
    if (segment.fd < 0) {
      *message = ErrnoText("open " + segment.path, errno);
      return Code::kIo;
    }
    struct stat st;
    if (::fstat(segment.fd, &st) != 0) {
      *message = ErrnoText("stat " + segment.path, errno);
      return Code::kIo;
    }
    segment.sizeBytes = static_cast<uint64_t>(st.st_size);
    SegmentHeader header;
    size_t got = 0;
    int err = PreadFull(segment.fd, &header, sizeof(header), 0, &got);
    if (err != 0) {
      *message = ErrnoText("read " + segment.path, err);
      return Code::kIo;
    }
    if (got < sizeof(header)) {
      item.shortFile = true;
      item.damage = "shorter than its 64-byte header (" + std::to_string(got) + " bytes)";
    } else {
      bool magic = std::memcmp(header.magic, kSegmentMagic, sizeof(kSegmentMagic)) == 0;
      bool checksum = header.checksum == ChecksumHeader(&header, kSegmentChecksummedHeaderBytes);
      if (magic && checksum && header.readVersionMin > kFormatVersion) {
        *message = "segment " + segment.path + " needs format reader version " +
                   std::to_string(header.readVersionMin) + "; this build reads version " +
                   std::to_string(kFormatVersion);
        return Code::kFormat;
      }
      if (!magic) {
        item.damage = "header has no kvpark segment magic";
      } else if (!checksum) {
        item.damage = "header checksum mismatch";
      } else if (header.segmentId != id) {
        item.damage = "header names segment " + std::to_string(header.segmentId);
      } else if (header.headerBytes != kSegmentHeaderBytes || header.flags != 0 ||
                 !AllZero(header.reserved, sizeof(header.reserved))) {
        item.damage = "header has fields this version does not know";
      }
    }
    found.push_back(std::move(item));
  }
  IndexFile index;
  if (haveIndex) {
    Code code = ReadIndexFile(&index, message);
    if (code != Code::kOk) return code;  // kFormat (newer) or kIo
  }

  // Pass 2: set damaged segments aside, then recover from what is left.
  if (haveIndexTmp) ::unlink((dir_ + "/INDEX.tmp").c_str());  // never renamed: not the checkpoint
  WriteLockPid();
  bool changed = false;
  for (Found& item : found) {
    Segment& segment = *item.segment;
    maxSegmentId = std::max(maxSegmentId, segment.id);
    if (item.damage.empty()) {
      segmentFileBytes_ += RoundUpToBlock(segment.sizeBytes);
      segments_[segment.id] = item.segment;
      continue;
    }
    changed = true;
    if (item.shortFile && segment.id == newestId) {
      // Created by a process killed before the header was durable: it holds no records.
      ::unlink(segment.path.c_str());
      stats_.truncatedBytes += segment.sizeBytes;
      stats_.openWarnings.push_back(SegmentName(segment.id) + ": " + item.damage +
                                    ", left by a crash while it was created; deleted");
      continue;
    }
    Quarantine(item.segment, item.damage);
  }
  for (const std::string& name : quarantinedBefore) {
    stats_.quarantinedFiles.push_back(name);
    otherFileBytes_ += FileRoundedBytes(dir_ + "/" + name);
  }
  if (!quarantinedBefore.empty()) {
    std::string names;
    for (const std::string& name : quarantinedBefore) names += (names.empty() ? "" : ", ") + name;
    stats_.openWarnings.push_back(std::to_string(quarantinedBefore.size()) +
                                  " quarantined segment file(s) from an earlier open remain: " + names +
                                  " (their blocks are absent; they count against bytesMax until deleted)");
  }
  std::sort(stats_.quarantinedFiles.begin(), stats_.quarantinedFiles.end());
  stats_.quarantinedSegments = stats_.quarantinedFiles.size();

  uint32_t replaySegmentId = segments_.empty() ? 1 : segments_.begin()->first;
  uint64_t replayOffset = kSegmentHeaderBytes;
  bool rebuilt = true;
  if (index.present) {
    std::string reason = index.reason;
    if (index.valid && ApplyIndex(index, &reason)) {
      rebuilt = false;
      replaySegmentId = index.header.replaySegmentId;
      replayOffset = index.header.replayOffset;
    }
    if (rebuilt) stats_.openWarnings.push_back("INDEX " + reason + "; ignored, the index is rebuilt from the segments");
  } else if (!segments_.empty()) {
    stats_.openWarnings.push_back("INDEX missing; the index is rebuilt from the segments");
  }
  if (rebuilt && (index.present || !segments_.empty())) stats_.indexRebuilds += 1;

  uint64_t replayedBefore = stats_.replayedRecords;
  uint64_t damagedBefore = stats_.badRecords + stats_.truncatedBytes + stats_.skippedBytes;
  for (auto& item : segments_) {
    if (item.first < replaySegmentId) continue;
    uint64_t from = item.first == replaySegmentId ? std::max(replayOffset, kSegmentHeaderBytes)
                                                  : kSegmentHeaderBytes;
    ScanSegment(item.second.get(), from, item.first == newestId);
  }

  nextSegmentId_ = std::max<uint32_t>(nextSegmentId_, maxSegmentId + 1);
  // Rebuild the recency list in the order the checkpoint (or the log) gave.
  std::vector<Entry*> ordered;
  ordered.reserve(index_.size());
  for (auto& item : index_) ordered.push_back(item.second.get());
  std::sort(ordered.begin(), ordered.end(),
            [](const Entry* a, const Entry* b) { return a->accessTick < b->accessTick; });
  uint64_t now = Now();
  for (Entry* entry : ordered) {
    LinkMruLocked(entry);
    accessTick_ = std::max(accessTick_, entry->accessTick + 1);
    auto& segment = segments_.at(entry->segmentId);
    segment->liveBytes += entry->recordBytes();
    segment->liveCount += 1;
    liveBytes_ += entry->recordBytes();
    if (IsPinnedLocked(*entry, now)) pinned_.insert(entry);
  }

  changed = changed || rebuilt || stats_.replayedRecords != replayedBefore ||
            stats_.badRecords + stats_.truncatedBytes + stats_.skippedBytes != damagedBefore;
  if (changed && !segments_.empty()) {
    std::lock_guard<std::mutex> writer(writeMu_);
    Checkpoint();
  }
  std::lock_guard<std::mutex> writer(writeMu_);
  ReclaimEmptySegments();
  // The cap may have been lowered since the last run.
  MakeRoom(0, 0);
  return Code::kOk;
}

Code Store::TakeLock(std::string* message) {
  std::string lockPath = dir_ + "/LOCK";
  lockFd_ = ::open(lockPath.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lockFd_ < 0) {
    *message = ErrnoText("open " + lockPath, errno);
    return Code::kIo;
  }
  if (::flock(lockFd_, LOCK_EX | LOCK_NB) == 0) return Code::kOk;
  int err = errno;
  if (err == EWOULDBLOCK) {
    *message = "store directory " + dir_ + " is locked by another open store: " + DescribeLockHolder();
    return Code::kLocked;
  }
  *message = ErrnoText("flock " + lockPath, err);
  return Code::kIo;
}

// LOCK holds the pid of the process that last took the lock (FORMAT.md, "Directory").
std::string Store::DescribeLockHolder() {
  char text[32] = {0};
  size_t got = 0;
  PreadFull(lockFd_, text, sizeof(text) - 1, 0, &got);
  uint64_t pid = 0;
  size_t digits = 0;
  while (digits < got && text[digits] >= '0' && text[digits] <= '9' && digits < 10)
    pid = pid * 10 + static_cast<uint64_t>(text[digits++] - '0');
  bool recorded = digits > 0 && digits < got && text[digits] == '\n' && pid > 0 && pid <= 0x7fffffff;
  if (!recorded) return "held by a process that has not recorded its pid (just starting, or an older kvpark build)";
  std::string who = "held by pid " + std::to_string(pid);
  if (static_cast<pid_t>(pid) == ::getpid()) return who + " (this process)";
  if (::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM) return who + " (a previous engine still shutting down?)";
  return "held by a process that did not record its pid (LOCK names pid " + std::to_string(pid) +
         ", which is not running; an older kvpark build?)";
}

void Store::WriteLockPid() {
  std::string text = std::to_string(::getpid()) + "\n";
  struct iovec iov = {const_cast<char*>(text.data()), text.size()};
  int err = IoWrite(lockFd_, &iov, 1, 0, FileKind::kLock);
  if (err == 0) err = IoTruncate(lockFd_, text.size(), FileKind::kLock);
  // Only a diagnostic for a second opener: the store opens without it.
  if (err != 0) CountWriteErrorLocked(err);
  struct stat st;
  if (::fstat(lockFd_, &st) == 0) otherFileBytes_ += RoundUpToBlock(static_cast<uint64_t>(st.st_size));
}

void Store::Quarantine(const std::shared_ptr<Segment>& segment, const std::string& reason) {
  std::string name = SegmentName(segment->id) + kQuarantineSuffix;
  for (int n = 2; FileExists(dir_ + "/" + name); ++n) name = SegmentName(segment->id) + kQuarantineSuffix + "-" + std::to_string(n);
  std::string target = dir_ + "/" + name;
  int err = IoRename(segment->path, target, FileKind::kSegment);
  if (err == 0) err = IoSyncDir();
  std::string what = SegmentName(segment->id) + ": " + reason + "; ";
  if (err != 0 && !FileExists(target)) {
    // Left in place, unused: the next open looks at it again.
    CountWriteErrorLocked(err);
    otherFileBytes_ += RoundUpToBlock(segment->sizeBytes);
    stats_.openWarnings.push_back(what + "could not be renamed aside (" + std::strerror(err) +
                                  "); ignored, its blocks are absent");
    return;
  }
  otherFileBytes_ += RoundUpToBlock(segment->sizeBytes);
  stats_.quarantinedFiles.push_back(name);
  stats_.openWarnings.push_back(what + "renamed to " + name + ", its blocks are absent (" +
                                std::to_string(segment->sizeBytes) + " bytes kept for inspection)");
}

Code Store::ReadIndexFile(IndexFile* index, std::string* message) {
  std::string path = dir_ + "/INDEX";
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return Code::kOk;
    *message = ErrnoText("open " + path, errno);
    return Code::kIo;
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    *message = ErrnoText("stat " + path, err);
    return Code::kIo;
  }
  std::vector<uint8_t> bytes(static_cast<size_t>(st.st_size));
  size_t got = 0;
  int err = PreadFull(fd, bytes.data(), bytes.size(), 0, &got);
  ::close(fd);
  if (err != 0) {
    *message = ErrnoText("read " + path, err);
    return Code::kIo;
  }
  bytes.resize(got);
  index->present = true;
  index->fileBytes = got;
  indexFileBytes_ = RoundUpToBlock(got);
  IndexHeader& header = index->header;
  if (got < sizeof(header)) {
    index->reason = "is shorter than its header (" + std::to_string(got) + " bytes)";
    return Code::kOk;
  }
  std::memcpy(&header, bytes.data(), sizeof(header));
  // Magic, the two version fields and the checksum (at 72, over [0, 72) and [80, end))
  // keep their places in every format version, so a newer INDEX is recognised as
  // such only when it verifies; a version field that fails the checksum is damage.
  XXH3_state_t* state = XXH3_createState();
  if (state == nullptr) std::abort();
  XXH3_64bits_reset(state);
  XXH3_64bits_update(state, bytes.data(), kIndexChecksummedHeaderBytes);
  XXH3_64bits_update(state, bytes.data() + sizeof(header), got - sizeof(header));
  uint64_t digest = XXH3_64bits_digest(state);
  XXH3_freeState(state);
  bool magic = std::memcmp(header.magic, kIndexMagic, sizeof(kIndexMagic)) == 0;
  if (magic && digest == header.checksum && header.readVersionMin > kFormatVersion) {
    *message = "index " + path + " needs format reader version " + std::to_string(header.readVersionMin) +
               "; this build reads version " + std::to_string(kFormatVersion);
    return Code::kFormat;
  }
  if (!magic) {
    index->reason = "has no kvpark index magic";
  } else if (digest != header.checksum) {
    index->reason = "checksum mismatch";
  } else if (header.entryBytes != sizeof(IndexEntry) || header.flags != 0 ||
             !AllZero(header.reserved, sizeof(header.reserved))) {
    index->reason = "header has fields this version does not know";
  } else if (header.entryCount > (got - sizeof(header)) / sizeof(IndexEntry) ||
             got != IndexFileBytes(header.entryCount)) {
    index->reason = "size does not match its entry count";
  } else {
    index->entries.resize(static_cast<size_t>(header.entryCount));
    if (!index->entries.empty())
      std::memcpy(index->entries.data(), bytes.data() + sizeof(header), index->entries.size() * sizeof(IndexEntry));
    index->valid = true;
  }
  return Code::kOk;
}

// All or nothing: every entry is checked before any is used, so an INDEX that fails
// a check is ignored whole and never drops a record.
bool Store::ApplyIndex(const IndexFile& index, std::string* reason) {
  const IndexHeader& header = index.header;
  if (header.replaySegmentId > header.nextSegmentId || header.replayOffset < kSegmentHeaderBytes ||
      header.nextSeqNo == 0) {
    *reason = "has an impossible replay position or sequence number";
    return false;
  }
  std::unordered_set<Key, KeyHash> keys;
  keys.reserve(index.entries.size());
  for (const IndexEntry& item : index.entries) {
    Key key;
    std::memcpy(key.bytes.data(), item.key, kKeyBytes);
    bool sane = item.segmentId < header.nextSegmentId && item.offset >= kSegmentHeaderBytes &&
                item.payloadBytes <= kPayloadBytesLimit && item.seqNo != 0 && item.seqNo < header.nextSeqNo &&
                (item.flags & ~kIndexEntryHardPin) == 0 && item.reserved == 0 && keys.insert(key).second;
    if (!sane) {
      *reason = "has an entry that cannot be right";
      return false;
    }
  }
  nextSegmentId_ = std::max(nextSegmentId_, header.nextSegmentId);
  nextSeqNo_ = std::max(nextSeqNo_, header.nextSeqNo);
  accessTick_ = std::max(accessTick_, header.accessTick);
  checkpointReplaySegmentId_ = header.replaySegmentId;
  checkpointReplayOffset_ = header.replayOffset;
  index_.reserve(index.entries.size());
  uint64_t pastEnd = 0;
  for (const IndexEntry& item : index.entries) {
    auto segment = segments_.find(item.segmentId);
    // A missing segment was reclaimed after this checkpoint (its blocks were evicted
    // or moved, and replay finds the moved copies), or was quarantined (reported).
    if (segment == segments_.end()) continue;
    // A segment cut short lost this record: drop the entry rather than fail a later read.
    if (item.offset + kRecordHeaderBytes + item.payloadBytes > segment->second->sizeBytes) {
      stats_.badRecords += 1;
      pastEnd += 1;
      continue;
    }
    auto entry = std::make_unique<Entry>();
    std::memcpy(entry->key.bytes.data(), item.key, kKeyBytes);
    entry->segmentId = item.segmentId;
    entry->payloadBytes = item.payloadBytes;
    entry->offset = item.offset;
    entry->seqNo = item.seqNo;
    entry->accessTick = item.accessTick;
    entry->pinUntilMs = item.pinUntilMs;
    entry->hardPin = (item.flags & kIndexEntryHardPin) != 0;
    Key key = entry->key;
    index_[key] = std::move(entry);
  }
  if (pastEnd != 0) {
    stats_.openWarnings.push_back("INDEX names " + std::to_string(pastEnd) +
                                  " block(s) past the end of their segment (cut short?); they are absent");
  }
  return true;
}

void Store::ScanSegment(Segment* segment, uint64_t fromOffset, bool newest) {
  std::vector<uint8_t> chunk;
  uint64_t chunkStart = 0;
  // Makes [offset, offset + count) available in `chunk`; false on I/O error.
  auto load = [&](uint64_t offset, uint64_t count) -> bool {
    if (offset >= chunkStart && offset + count <= chunkStart + chunk.size()) return true;
    uint64_t want = std::max<uint64_t>(count, kScanChunkBytes);
    want = std::min<uint64_t>(want, segment->sizeBytes - offset);
    chunk.resize(static_cast<size_t>(want));
    size_t got = 0;
    if (PreadFull(segment->fd, chunk.data(), chunk.size(), offset, &got) != 0 || got != chunk.size()) {
      chunk.clear();
      chunkStart = 0;
      return false;
    }
    chunkStart = offset;
    return true;
  };
  enum class Check { kValid, kDamaged, kIoError };
  // Whether a whole record that verifies starts at `offset`.
  auto check = [&](uint64_t offset, RecordHeader* header, uint64_t* end) -> Check {
    if (segment->sizeBytes - offset < kRecordHeaderBytes) return Check::kDamaged;
    if (!load(offset, kRecordHeaderBytes)) return Check::kIoError;
    std::memcpy(header, chunk.data() + (offset - chunkStart), sizeof(*header));
    bool sane = header->magic == kRecordMagic &&
                (header->kind == kRecordBlock || (header->kind == kRecordTombstone && header->payloadBytes == 0)) &&
                header->reserved0 == 0 && header->reserved1 == 0 && header->payloadBytes <= kPayloadBytesLimit;
    if (!sane) return Check::kDamaged;
    *end = offset + kRecordHeaderBytes + header->payloadBytes;
    if (*end > segment->sizeBytes) return Check::kDamaged;
    if (!load(offset, *end - offset)) return Check::kIoError;
    const uint8_t* payload = chunk.data() + (offset - chunkStart) + kRecordHeaderBytes;
    return ChecksumRecord(*header, payload, header->payloadBytes) == header->checksum ? Check::kValid
                                                                                     : Check::kDamaged;
  };
  // Resynchronizes: the first offset from `from` on where a record verifies, or the
  // end of the file. The damaged record's own length is not trusted to step over it.
  auto findNext = [&](uint64_t from, uint64_t* next) -> bool {
    static const uint8_t kMagicBytes[4] = {0x4b, 0x56, 0x52, 0x43};
    uint64_t pos = from;
    while (pos + kRecordHeaderBytes <= segment->sizeBytes) {
      uint64_t span = std::min<uint64_t>(kScanChunkBytes, segment->sizeBytes - pos);
      if (!load(pos, span)) return false;
      const uint8_t* base = chunk.data() + (pos - chunkStart);
      const void* hit = ::memmem(base, static_cast<size_t>(span), kMagicBytes, sizeof(kMagicBytes));
      if (hit == nullptr) {
        pos += span - (sizeof(kMagicBytes) - 1);
        continue;
      }
      uint64_t candidate = pos + static_cast<uint64_t>(static_cast<const uint8_t*>(hit) - base);
      RecordHeader header;
      uint64_t end = 0;
      Check result = check(candidate, &header, &end);
      if (result == Check::kIoError) return false;
      if (result == Check::kValid) {
        *next = candidate;
        return true;
      }
      pos = candidate + 1;
    }
    *next = segment->sizeBytes;
    return true;
  };

  uint64_t offset = fromOffset;
  uint64_t damagedRecords = 0;
  uint64_t damagedBytes = 0;
  while (offset < segment->sizeBytes) {
    RecordHeader header;
    std::memset(&header, 0, sizeof(header));
    uint64_t end = 0;
    Check result = check(offset, &header, &end);
    if (result == Check::kIoError) {
      stats_.readErrors += 1;
      break;
    }
    if (result == Check::kValid) {
      ApplyRecovered(header, segment->id, offset);
      stats_.replayedRecords += 1;
      offset = end;
      continue;
    }
    // A record should start here and does not verify.
    uint64_t next = 0;
    if (!findNext(offset + 1, &next)) {
      stats_.readErrors += 1;
      break;
    }
    if (next == segment->sizeBytes && newest) {
      // A torn append at the end of the newest segment: cut it off.
      if (IoTruncate(segment->fd, offset, FileKind::kSegment) == 0) {
        stats_.truncatedBytes += segment->sizeBytes - offset;
        segmentFileBytes_ -= RoundUpToBlock(segment->sizeBytes) - RoundUpToBlock(offset);
        stats_.openWarnings.push_back(SegmentName(segment->id) + ": torn append of " +
                                      std::to_string(segment->sizeBytes - offset) + " bytes at its end cut off");
        segment->sizeBytes = offset;
      }  // else left for the next open
      break;
    }
    if (next < segment->sizeBytes) {
      // Damage inside the log, not a torn tail. Whatever the index holds for the key this
      // header names is older, and the damaged record may have been its newest version:
      // drop it rather than risk serving a stale block (a damaged tombstone likewise).
      // Should the record have been a write torn by a power loss, this costs a miss.
      Key key;
      std::memcpy(key.bytes.data(), header.key, kKeyBytes);
      index_.erase(key);
    }
    stats_.badRecords += 1;
    stats_.skippedBytes += next - offset;
    damagedRecords += 1;
    damagedBytes += next - offset;
    offset = next;
  }
  if (damagedRecords != 0) {
    stats_.openWarnings.push_back(SegmentName(segment->id) + ": " + std::to_string(damagedRecords) +
                                  " damaged record(s) skipped (" + std::to_string(damagedBytes) +
                                  " bytes kept, unused); the blocks in them are absent");
  }
}

void Store::ApplyRecovered(const RecordHeader& header, uint32_t segmentId, uint64_t offset) {
  Key key;
  std::memcpy(key.bytes.data(), header.key, kKeyBytes);
  nextSeqNo_ = std::max(nextSeqNo_, header.seqNo + 1);
  auto found = index_.find(key);
  if (header.kind == kRecordTombstone) {
    if (found != index_.end() && found->second->seqNo < header.seqNo) index_.erase(found);
    return;
  }
  // Equal sequence numbers are a relocated copy of the same block: the later position wins.
  if (found != index_.end() && found->second->seqNo > header.seqNo) return;
  if (found == index_.end()) {
    auto entry = std::make_unique<Entry>();
    entry->key = key;
    found = index_.emplace(key, std::move(entry)).first;
  }
  Entry& entry = *found->second;
  entry.segmentId = segmentId;
  entry.offset = offset;
  entry.payloadBytes = header.payloadBytes;
  entry.seqNo = header.seqNo;
  entry.accessTick = accessTick_++;
}

bool Store::Enter() {
  std::lock_guard<std::mutex> lock(lifeMu_);
  if (closed_) return false;
  inflight_ += 1;
  return true;
}

void Store::Leave() {
  std::lock_guard<std::mutex> lock(lifeMu_);
  inflight_ -= 1;
  if (inflight_ == 0) lifeCv_.notify_all();
}

void Store::Close() {
  std::lock_guard<std::mutex> closing(closeMu_);
  {
    std::unique_lock<std::mutex> lock(lifeMu_);
    if (closed_ && lockFd_ < 0) return;
    closed_ = true;
    lifeCv_.wait(lock, [this] { return inflight_ == 0; });
  }
  StopReadPool();
  {
    std::lock_guard<std::mutex> writer(writeMu_);
    if (lockFd_ >= 0 && !segments_.empty() && dirtySinceCheckpoint_) Checkpoint();
    std::lock_guard<std::mutex> meta(metaMu_);
    metaClosed_ = true;
    active_.reset();
    segments_.clear();
    pinned_.clear();
    index_.clear();
    lru_->prev = lru_.get();
    lru_->next = lru_.get();
  }
  if (lockFd_ >= 0) {
    ::close(lockFd_);  // releases the flock
    lockFd_ = -1;
  }
}

// ---- accounting -------------------------------------------------------------

uint64_t Store::IndexReserveLocked(uint64_t entriesAdded) const {
  // The next checkpoint writes INDEX.tmp next to INDEX; keep room for it.
  return RoundUpToBlock(IndexFileBytes(index_.size() + pendingNewKeys_ + entriesAdded));
}

uint64_t Store::CompactBudgetLocked() const {
  uint64_t reserve = IndexReserveLocked(0);
  return options_.bytesMax > reserve ? options_.bytesMax - reserve : 0;
}

uint64_t Store::WriteBudgetLocked(uint64_t entriesAdded) const {
  // Compaction copies at most one segment's live bytes before freeing it.
  uint64_t reserve = IndexReserveLocked(entriesAdded) + options_.segmentBytes + kAppendSlackBytes;
  return options_.bytesMax > reserve ? options_.bytesMax - reserve : 0;
}

bool Store::IsPinnedLocked(const Entry& entry, uint64_t nowMs) const {
  return entry.hardPin || entry.pinUntilMs > nowMs;
}

void Store::LinkMruLocked(Entry* entry) {
  Entry* head = lru_.get();
  entry->prev = head->prev;
  entry->next = head;
  head->prev->next = entry;
  head->prev = entry;
}

void Store::UnlinkLocked(Entry* entry) {
  entry->prev->next = entry->next;
  entry->next->prev = entry->prev;
  entry->prev = entry->next = nullptr;
}

void Store::DropLocked(Entry* entry) {
  auto segment = segments_.find(entry->segmentId);
  if (segment != segments_.end()) {
    segment->second->liveBytes -= entry->recordBytes();
    segment->second->liveCount -= 1;
  }
  liveBytes_ -= entry->recordBytes();
  pinned_.erase(entry);
  UnlinkLocked(entry);
  dirtySinceCheckpoint_ = true;
  Key key = entry->key;
  index_.erase(key);  // destroys entry
}

bool Store::EvictLruLocked(uint64_t liveTargetBytes) {
  uint64_t now = Now();
  Entry* cursor = lru_->next;
  while (cursor != lru_.get()) {
    Entry* next = cursor->next;
    if (IsPinnedLocked(*cursor, now)) {
      cursor = next;
      continue;
    }
    if (liveBytes_ + pendingBytes_ <= liveTargetBytes) return true;  // more could go if asked
    pinned_.erase(cursor);  // an expired soft pin
    DropLocked(cursor);
    stats_.evictions += 1;
    cursor = next;
  }
  return false;  // nothing evictable left
}

// ---- space management ---------------------------------------------------------

bool Store::MakeRoom(uint64_t extraBytes, uint64_t entriesAdded) {
  bool rolledForDeadSpace = false;
  std::set<uint32_t> stuck;  // segments whose pinned blocks could not be moved this time
  uint64_t evictMoreBytes = 0;
  for (int round = 0; round < kMakeRoomRoundsMax; ++round) {
    bool evictable;
    {
      std::lock_guard<std::mutex> meta(metaMu_);
      uint64_t budget = WriteBudgetLocked(entriesAdded);
      uint64_t disk = DiskBytesLocked();
      if (disk + extraBytes <= budget) return true;
      // Evict by recency first, one segment below what is needed, so that the
      // segments reclaimed next are mostly dead and compaction copies little.
      uint64_t slack = extraBytes + options_.segmentBytes + evictMoreBytes;
      uint64_t liveTarget = budget > slack ? budget - slack : 0;
      evictable = EvictLruLocked(liveTarget);
    }
    if (ReclaimEmptySegments()) continue;
    if (CompactOne(&stuck)) continue;
    {
      // Dead space may sit only in the active segment: seal it so it can be compacted.
      std::lock_guard<std::mutex> meta(metaMu_);
      if (!rolledForDeadSpace && active_ && active_->pendingRecords == 0 &&
          active_->sizeBytes > kSegmentHeaderBytes + active_->liveBytes) {
        active_->sealed = true;
        active_.reset();
        rolledForDeadSpace = true;
        continue;
      }
    }
    // Dead space spread too thin over many segments to be worth copying: evict
    // further down the recency list until whole segments empty out.
    if (!evictable) return false;
    evictMoreBytes += options_.segmentBytes;
  }
  return false;
}

bool Store::ReclaimEmptySegments() {
  std::vector<std::shared_ptr<Segment>> empty;
  bool needCheckpoint = false;
  {
    std::lock_guard<std::mutex> meta(metaMu_);
    for (auto& item : segments_) {
      Segment& segment = *item.second;
      if (segment.liveCount != 0 || segment.pendingRecords != 0 || item.second == active_) continue;
      empty.push_back(item.second);
      // Records after the checkpoint's replay start (tombstones among them) are
      // still needed by recovery until a newer checkpoint covers them.
      if (segment.id >= checkpointReplaySegmentId_) needCheckpoint = true;
    }
  }
  if (empty.empty()) return false;
  if (needCheckpoint && !Checkpoint()) {
    // Without a checkpoint, deleting only loses tombstones' effect after a crash
    // (a deleted block may come back); keeping the cap matters more.
  }
  for (auto& segment : empty) DeleteSegment(segment);
  return true;
}

void Store::DeleteSegment(const std::shared_ptr<Segment>& segment) {
  {
    std::lock_guard<std::mutex> meta(metaMu_);
    if (segments_.erase(segment->id) == 0) return;
    segmentFileBytes_ -= RoundUpToBlock(segment->sizeBytes);
  }
  // Readers holding the shared_ptr keep the descriptor; the inode goes with the last one.
  ::unlink(segment->path.c_str());
  if (options_.fsync == FsyncPolicy::kBatch) {
    // Not fatal: after a crash the segment may come back, holding only dead records.
    if (int err = IoSyncDir()) {
      std::lock_guard<std::mutex> meta(metaMu_);
      CountWriteErrorLocked(err);
    }
  }
}

bool Store::CompactOne(std::set<uint32_t>* stuck) {
  std::shared_ptr<Segment> victim;
  std::vector<ReadTask> live;
  {
    std::lock_guard<std::mutex> meta(metaMu_);
    uint64_t bestDead = 0;
    for (auto& item : segments_) {
      Segment& segment = *item.second;
      if (item.second == active_ || segment.pendingRecords != 0 || stuck->count(item.first) != 0) continue;
      uint64_t dead = segment.sizeBytes - kSegmentHeaderBytes - segment.liveBytes;
      // Copying a segment to win back less than this would not even pay for rounding.
      if (dead >= kCompactDeadBytesMin && dead > bestDead) {
        bestDead = dead;
        victim = item.second;
      }
    }
    if (!victim) return false;
    for (auto& item : index_) {
      const Entry& entry = *item.second;
      if (entry.segmentId != victim->id) continue;
      ReadTask task;
      task.key = entry.key;
      task.segment = victim;
      task.offset = entry.offset;
      task.payloadBytes = entry.payloadBytes;
      task.seqNo = entry.seqNo;
      live.push_back(task);
    }
  }
  std::sort(live.begin(), live.end(), [](const ReadTask& a, const ReadTask& b) { return a.offset < b.offset; });
  struct Copy {
    const ReadTask* task;
    uint32_t segmentId;
    uint64_t offset;
    uint32_t payloadBytes;
  };
  std::vector<Copy> copies;
  for (const ReadTask& task : live) {
    ReadResult read;
    Code code = ReadVerified(task, nullptr, &read);
    std::unique_lock<std::mutex> meta(metaMu_);
    auto found = index_.find(task.key);
    bool same = found != index_.end() && found->second->seqNo == task.seqNo &&
                found->second->segmentId == victim->id && found->second->offset == task.offset;
    if (!same) {
      std::free(read.base);
      continue;
    }
    Entry* entry = found->second.get();
    // A damaged copy is dropped; one that could not be read just now (an I/O error) stays where it
    // is, and its segment with it, rather than losing a block nothing says is damaged.
    if (code == Code::kCorrupt) {
      stats_.corruptions += 1;
      DropLocked(entry);
      continue;
    }
    if (code != Code::kOk) continue;
    bool pinned = IsPinnedLocked(*entry, Now());
    meta.unlock();
    uint32_t segmentId = 0;
    uint64_t offset = 0;
    code = AppendRecord(task.key, kRecordBlock, read.base + ReadResult::kPayloadOffset, read.payloadBytes,
                        task.seqNo, true, &segmentId, &offset);
    std::free(read.base);
    if (code == Code::kOk) {
      copies.push_back({&task, segmentId, offset, read.payloadBytes});
      continue;
    }
    meta.lock();
    found = index_.find(task.key);
    same = found != index_.end() && found->second->seqNo == task.seqNo && found->second->segmentId == victim->id;
    // No room to move it (the cap was lowered, or the disk is full): drop it
    // unless pinned. A pinned block keeps its segment alive for now.
    if (!same || pinned) continue;
    DropLocked(found->second.get());
    stats_.evictions += 1;
  }
  // The copies must be durable before anything points at them and before the
  // originals can go: a copy whose file fails to sync is dead, its original stays.
  std::set<uint32_t> unsynced;
  {
    std::vector<std::shared_ptr<Segment>> targets;
    {
      std::lock_guard<std::mutex> meta(metaMu_);
      for (const Copy& copy : copies) {
        auto target = segments_.find(copy.segmentId);
        if (target != segments_.end() && std::find(targets.begin(), targets.end(), target->second) == targets.end())
          targets.push_back(target->second);
      }
    }
    for (auto& target : targets) {
      int err = target->syncFailed ? target->syncErrno : IoSync(target->fd, FileKind::kSegment);
      if (err == 0) continue;
      unsynced.insert(target->id);
      if (target->syncFailed) continue;
      target->syncFailed = true;
      target->syncErrno = err;
      std::lock_guard<std::mutex> meta(metaMu_);
      target->sealed = true;
      CountWriteErrorLocked(err);
    }
  }
  bool wroteAny = false;
  {
    std::lock_guard<std::mutex> meta(metaMu_);
    for (const Copy& copy : copies) {
      auto target = segments_.find(copy.segmentId);
      target->second->pendingRecords -= 1;
      pendingBytes_ -= kRecordHeaderBytes + copy.payloadBytes;
      if (unsynced.count(copy.segmentId) != 0) continue;
      auto found = index_.find(copy.task->key);
      bool same = found != index_.end() && found->second->seqNo == copy.task->seqNo &&
                  found->second->segmentId == victim->id && found->second->offset == copy.task->offset;
      if (!same) continue;  // overwritten, deleted or dropped meanwhile: the copy is dead
      Entry* entry = found->second.get();
      victim->liveBytes -= entry->recordBytes();
      victim->liveCount -= 1;
      entry->segmentId = copy.segmentId;
      entry->offset = copy.offset;
      target->second->liveBytes += entry->recordBytes();
      target->second->liveCount += 1;
      stats_.relocatedBytes += entry->recordBytes();
      dirtySinceCheckpoint_ = true;
      wroteAny = true;
    }
  }
  if (wroteAny || victim->id >= checkpointReplaySegmentId_) {
    // The index should point at the copies before the original goes away. If this
    // checkpoint fails, the older one names the original's segment, which is gone
    // after the delete: recovery drops those entries and replay finds the copies,
    // which lie after the older checkpoint's replay start.
    Checkpoint();
  }
  {
    std::lock_guard<std::mutex> meta(metaMu_);
    if (victim->liveCount != 0) {
      stuck->insert(victim->id);
      return true;  // blocks were moved or evicted; MakeRoom looks again
    }
    stats_.compactions += 1;
  }
  DeleteSegment(victim);
  return true;
}

Code Store::Roll(int* err) {
  uint32_t id;
  {
    std::lock_guard<std::mutex> meta(metaMu_);
    id = nextSegmentId_++;
  }
  auto segment = std::make_shared<Segment>();
  segment->id = id;
  segment->path = dir_ + "/" + SegmentName(id);
  *err = IoCreate(segment->path, O_RDWR | O_EXCL, FileKind::kSegment, &segment->fd);
  if (*err != 0) return Code::kIo;
  SegmentHeader header;
  std::memset(&header, 0, sizeof(header));
  std::memcpy(header.magic, kSegmentMagic, sizeof(kSegmentMagic));
  header.formatVersion = kFormatVersion;
  header.readVersionMin = kFormatVersion;
  header.segmentId = id;
  header.headerBytes = kSegmentHeaderBytes;
  header.checksum = ChecksumHeader(&header, kSegmentChecksummedHeaderBytes);
  struct iovec iov = {&header, sizeof(header)};
  *err = IoWrite(segment->fd, &iov, 1, 0, FileKind::kSegment);
  if (*err == 0 && options_.fsync == FsyncPolicy::kBatch) {
    *err = IoSync(segment->fd, FileKind::kSegment);
    if (*err == 0) *err = IoSyncDir();
  }
  if (*err != 0) {
    ::unlink(segment->path.c_str());
    return Code::kIo;
  }
  segment->sizeBytes = kSegmentHeaderBytes;
  std::shared_ptr<Segment> previous;
  {
    std::lock_guard<std::mutex> meta(metaMu_);
    previous = active_;
    if (previous) previous->sealed = true;
    segments_[id] = segment;
    segmentFileBytes_ += RoundUpToBlock(segment->sizeBytes);
    active_ = segment;
  }
  // Under the batch policy a sealed segment's records are synced at commit; a
  // segment sealed mid-batch is synced here so commit only has to sync active_.
  if (previous && options_.fsync == FsyncPolicy::kBatch && !previous->syncFailed) {
    if (int syncErr = IoSync(previous->fd, FileKind::kSegment)) {
      previous->syncFailed = true;
      previous->syncErrno = syncErr;
      std::lock_guard<std::mutex> meta(metaMu_);
      CountWriteErrorLocked(syncErr);
    }
  }
  return Code::kOk;
}

Code Store::AppendRecord(const Key& key, uint16_t kind, const uint8_t* payload, uint32_t payloadBytes,
                         uint64_t seqNo, bool forCompaction, uint32_t* segmentId, uint64_t* offset) {
  uint64_t recordBytes = kRecordHeaderBytes + payloadBytes;
  std::shared_ptr<Segment> segment;
  for (int attempt = 0; attempt < 2; ++attempt) {
    std::unique_lock<std::mutex> meta(metaMu_);
    // Checked once, before a roll: the slack covers the new segment's header block.
    uint64_t disk = DiskBytesLocked();
    uint64_t budget = forCompaction ? CompactBudgetLocked() : WriteBudgetLocked(kind == kRecordBlock ? 1 : 0);
    if (attempt == 0 && disk + recordBytes + kAppendSlackBytes > budget) return Code::kCapacity;
    bool fits = active_ && !active_->sealed && active_->sizeBytes + recordBytes <= options_.segmentBytes;
    if (fits) {
      segment = active_;
      break;
    }
    meta.unlock();
    int err = 0;
    Code rolled = Roll(&err);
    if (rolled != Code::kOk) {
      std::lock_guard<std::mutex> relock(metaMu_);
      CountWriteErrorLocked(err);
      return rolled;
    }
  }
  if (!segment) return Code::kCapacity;

  RecordHeader header;
  std::memset(&header, 0, sizeof(header));
  header.magic = kRecordMagic;
  header.kind = kind;
  header.payloadBytes = payloadBytes;
  std::memcpy(header.key, key.bytes.data(), kKeyBytes);
  uint64_t at;
  {
    std::lock_guard<std::mutex> meta(metaMu_);
    header.seqNo = seqNo != 0 ? seqNo : nextSeqNo_++;
    at = segment->sizeBytes;
    segmentFileBytes_ += RoundUpToBlock(at + recordBytes) - RoundUpToBlock(at);
    segment->sizeBytes = at + recordBytes;
    segment->pendingRecords += 1;
    pendingBytes_ += recordBytes;
    if (!havePendingStart_ && !forCompaction) {
      havePendingStart_ = true;
      pendingStartSegmentId_ = segment->id;
      pendingStartOffset_ = at;
    }
  }
  header.checksum = ChecksumRecord(header, payload, payloadBytes);
  struct iovec iov[2] = {{&header, sizeof(header)}, {const_cast<uint8_t*>(payload), payloadBytes}};
  int err = IoWrite(segment->fd, iov, payloadBytes > 0 ? 2 : 1, at, FileKind::kSegment);
  if (err != 0) {
    // Cut the partial record off so the segment stays a clean log and the next
    // append goes where this one started. If even that fails, seal the segment:
    // nothing is appended after the torn bytes, and recovery skips them.
    int cutErr = IoTruncate(segment->fd, at, FileKind::kSegment);
    struct stat st;
    bool sized = cutErr != 0 && ::fstat(segment->fd, &st) == 0;
    std::lock_guard<std::mutex> meta(metaMu_);
    CountWriteErrorLocked(err);
    segment->pendingRecords -= 1;
    pendingBytes_ -= recordBytes;
    uint64_t size = cutErr == 0 ? at : sized ? std::max<uint64_t>(at, static_cast<uint64_t>(st.st_size)) : at + recordBytes;
    segmentFileBytes_ -= RoundUpToBlock(at + recordBytes);
    segmentFileBytes_ += RoundUpToBlock(size);
    segment->sizeBytes = size;
    if (cutErr != 0) segment->sealed = true;
    return Code::kIo;
  }
  bytesSinceCheckpoint_ += recordBytes;
  *segmentId = segment->id;
  *offset = at;
  return Code::kOk;
}

// ---- writes -------------------------------------------------------------------

std::vector<Code> Store::Write(const std::vector<WriteOp>& ops) {
  std::vector<Code> results(ops.size(), Code::kOk);
  if (!Enter()) {
    std::fill(results.begin(), results.end(), Code::kClosed);
    return results;
  }
  struct Pending {
    size_t op;
    uint32_t segmentId;
    uint64_t offset;
    uint64_t seqNo;
  };
  std::vector<Pending> pending;
  std::lock_guard<std::mutex> writer(writeMu_);
  for (size_t i = 0; i < ops.size(); ++i) {
    const WriteOp& op = ops[i];
    if (op.isDelete) {
      std::lock_guard<std::mutex> meta(metaMu_);
      bool known = index_.count(op.key) != 0;
      for (const Pending& earlier : pending)
        if (!ops[earlier.op].isDelete && ops[earlier.op].key == op.key) known = true;
      if (!known) {
        results[i] = Code::kNotFound;
        continue;
      }
    }
    if (!op.isDelete && op.payloadBytes > MaxPayloadBytes(options_.segmentBytes)) {
      results[i] = Code::kCapacity;
      std::lock_guard<std::mutex> meta(metaMu_);
      stats_.capacityRejects += 1;
      continue;
    }
    uint64_t recordBytes = kRecordHeaderBytes + (op.isDelete ? 0 : op.payloadBytes);
    uint64_t entriesAdded = op.isDelete ? 0 : 1;
    if (!MakeRoom(recordBytes + kAppendSlackBytes, entriesAdded)) {
      results[i] = Code::kCapacity;
      std::lock_guard<std::mutex> meta(metaMu_);
      stats_.capacityRejects += 1;
      continue;
    }
    Pending item{i, 0, 0, 0};
    {
      std::lock_guard<std::mutex> meta(metaMu_);
      item.seqNo = nextSeqNo_++;
    }
    Code code = AppendRecord(op.key, op.isDelete ? kRecordTombstone : kRecordBlock, op.payload,
                             op.isDelete ? 0 : op.payloadBytes, item.seqNo, false, &item.segmentId, &item.offset);
    if (code != Code::kOk) {
      results[i] = code;
      if (code == Code::kCapacity) {
        std::lock_guard<std::mutex> meta(metaMu_);
        stats_.capacityRejects += 1;
      }
      continue;
    }
    if (!op.isDelete) {
      std::lock_guard<std::mutex> meta(metaMu_);
      if (index_.count(op.key) == 0) pendingNewKeys_ += 1;
    }
    pending.push_back(item);
  }

  // Group commit: one fdatasync makes every record of this batch durable.
  std::vector<uint32_t> failedSegments;
  if (!pending.empty() && options_.fsync == FsyncPolicy::kBatch) {
    std::vector<std::shared_ptr<Segment>> touched;
    {
      std::lock_guard<std::mutex> meta(metaMu_);
      for (const Pending& item : pending) {
        auto segment = segments_.find(item.segmentId);
        if (segment != segments_.end() &&
            std::find(touched.begin(), touched.end(), segment->second) == touched.end())
          touched.push_back(segment->second);
      }
    }
    for (auto& segment : touched) {
      // An earlier sync failure on this file poisons it: Linux reports it only once.
      if (segment->syncFailed) {
        failedSegments.push_back(segment->id);
        continue;
      }
      if (int err = IoSync(segment->fd, FileKind::kSegment)) {
        segment->syncFailed = true;
        segment->syncErrno = err;
        failedSegments.push_back(segment->id);
      }
    }
  }

  std::unique_lock<std::mutex> meta(metaMu_);
  for (const Pending& item : pending) {
    const WriteOp& op = ops[item.op];
    uint64_t recordBytes = kRecordHeaderBytes + (op.isDelete ? 0 : op.payloadBytes);
    auto segment = segments_.find(item.segmentId);
    if (segment != segments_.end()) segment->second->pendingRecords -= 1;
    pendingBytes_ -= recordBytes;
    bool synced = std::find(failedSegments.begin(), failedSegments.end(), item.segmentId) == failedSegments.end();
    if (!synced) {
      // After a failed fsync the page cache may hold data the disk never got
      // (the "fsyncgate" lesson): report failure and never index these records.
      results[item.op] = Code::kIo;
      CountWriteErrorLocked(segment != segments_.end() ? segment->second->syncErrno : EIO);
      if (segment != segments_.end()) segment->second->sealed = true;
      continue;
    }
    auto found = index_.find(op.key);
    if (op.isDelete) {
      if (found != index_.end() && found->second->seqNo < item.seqNo) DropLocked(found->second.get());
      continue;
    }
    Entry* entry;
    if (found != index_.end()) {
      entry = found->second.get();
      auto old = segments_.find(entry->segmentId);
      if (old != segments_.end()) {
        old->second->liveBytes -= entry->recordBytes();
        old->second->liveCount -= 1;
      }
      liveBytes_ -= entry->recordBytes();
      UnlinkLocked(entry);
    } else {
      auto created = std::make_unique<Entry>();
      created->key = op.key;
      entry = created.get();
      index_.emplace(op.key, std::move(created));
    }
    entry->segmentId = item.segmentId;
    entry->offset = item.offset;
    entry->payloadBytes = op.payloadBytes;
    entry->seqNo = item.seqNo;
    entry->accessTick = accessTick_++;
    LinkMruLocked(entry);
    liveBytes_ += recordBytes;
    if (segment != segments_.end()) {
      segment->second->liveBytes += recordBytes;
      segment->second->liveCount += 1;
    }
    stats_.blocksWritten += 1;
  }
  pendingNewKeys_ = 0;
  havePendingStart_ = false;
  if (!pending.empty()) dirtySinceCheckpoint_ = true;
  bool checkpointDue = bytesSinceCheckpoint_ >= options_.checkpointEveryBytes;
  meta.unlock();
  if (checkpointDue) Checkpoint();
  Leave();
  return results;
}

bool Store::Checkpoint() {
  std::vector<uint8_t> bytes;
  std::shared_ptr<Segment> active;
  uint64_t roundedBytes;
  {
    std::lock_guard<std::mutex> meta(metaMu_);
    IndexHeader header;
    std::memset(&header, 0, sizeof(header));
    std::memcpy(header.magic, kIndexMagic, sizeof(kIndexMagic));
    header.formatVersion = kFormatVersion;
    header.readVersionMin = kFormatVersion;
    header.entryCount = index_.size();
    if (havePendingStart_) {
      header.replaySegmentId = pendingStartSegmentId_;
      header.replayOffset = pendingStartOffset_;
    } else if (active_) {
      header.replaySegmentId = active_->id;
      header.replayOffset = active_->sizeBytes;
    } else {
      header.replaySegmentId = nextSegmentId_;
      header.replayOffset = kSegmentHeaderBytes;
    }
    header.nextSegmentId = nextSegmentId_;
    header.nextSeqNo = nextSeqNo_;
    header.accessTick = accessTick_;
    header.entryBytes = sizeof(IndexEntry);
    bytes.resize(static_cast<size_t>(IndexFileBytes(index_.size())));
    roundedBytes = RoundUpToBlock(bytes.size());
    if (DiskBytesLocked() + roundedBytes > options_.bytesMax) {
      stats_.capacityRejects += 1;
      return false;
    }
    // Least recent first, so a reader that keeps file order rebuilds the LRU list directly.
    uint8_t* cursor = bytes.data() + sizeof(IndexHeader);
    for (Entry* entry = lru_->next; entry != lru_.get(); entry = entry->next, cursor += sizeof(IndexEntry)) {
      IndexEntry item;
      std::memset(&item, 0, sizeof(item));
      std::memcpy(item.key, entry->key.bytes.data(), kKeyBytes);
      item.segmentId = entry->segmentId;
      item.payloadBytes = entry->payloadBytes;
      item.offset = entry->offset;
      item.seqNo = entry->seqNo;
      item.accessTick = entry->accessTick;
      item.pinUntilMs = entry->pinUntilMs;
      item.flags = entry->hardPin ? kIndexEntryHardPin : 0;
      std::memcpy(cursor, &item, sizeof(item));
    }
    XXH3_state_t* state = XXH3_createState();
    if (state == nullptr) std::abort();
    XXH3_64bits_reset(state);
    XXH3_64bits_update(state, &header, kIndexChecksummedHeaderBytes);
    XXH3_64bits_update(state, bytes.data() + sizeof(IndexHeader), bytes.size() - sizeof(IndexHeader));
    header.checksum = XXH3_64bits_digest(state);
    XXH3_freeState(state);
    std::memcpy(bytes.data(), &header, sizeof(header));
    active = active_;
    tmpIndexBytes_ = roundedBytes;
    segmentFileBytes_ += roundedBytes;  // INDEX.tmp counts while it exists
  }
  IndexHeader written;
  std::memcpy(&written, bytes.data(), sizeof(written));

  std::string tmpPath = dir_ + "/INDEX.tmp";
  std::string path = dir_ + "/INDEX";
  int err = 0;
  // Records the index points at must be on disk before the index is. A segment whose
  // sync failed earlier is skipped: every record in it the index points at was synced
  // before that failure (a failed batch's records are never indexed).
  bool activeFailed = false;
  if (active && !active->syncFailed) {
    err = IoSync(active->fd, FileKind::kSegment);
    activeFailed = err != 0;
  }
  int fd = -1;
  if (err == 0) err = IoCreate(tmpPath, O_WRONLY | O_TRUNC, FileKind::kIndex, &fd);
  if (err == 0) {
    struct iovec iov = {bytes.data(), bytes.size()};
    err = IoWrite(fd, &iov, 1, 0, FileKind::kIndex);
  }
  if (err == 0) err = IoSync(fd, FileKind::kIndex);
  if (fd >= 0) ::close(fd);
  if (err == 0) err = IoRename(tmpPath, path, FileKind::kIndex);
  // The rename happened; if the directory sync fails it may not survive a crash,
  // and the older INDEX (still consistent) comes back: recovery replays more.
  int dirErr = err == 0 ? IoSyncDir() : 0;

  std::lock_guard<std::mutex> meta(metaMu_);
  segmentFileBytes_ -= tmpIndexBytes_;
  tmpIndexBytes_ = 0;
  if (activeFailed) {
    // Its unsynced pages may be gone: nothing more goes into it, and records in it
    // that the current batch has not reported yet fail (Write() sees syncFailed).
    active->syncFailed = true;
    active->syncErrno = err;
    active->sealed = true;
  }
  if (dirErr != 0) CountWriteErrorLocked(dirErr);
  if (err != 0) {
    ::unlink(tmpPath.c_str());
    CountWriteErrorLocked(err);
    // Keep the older replay start: the failed checkpoint covers nothing.
    return false;
  }
  indexFileBytes_ = roundedBytes;
  checkpointReplaySegmentId_ = written.replaySegmentId;
  checkpointReplayOffset_ = written.replayOffset;
  bytesSinceCheckpoint_ = 0;
  dirtySinceCheckpoint_ = false;
  stats_.checkpoints += 1;
  return true;
}

// ---- reads --------------------------------------------------------------------

// The payload goes to `into` when given, else into a malloc'd copy of the whole record
// that *result then owns.
Code Store::ReadVerified(const ReadTask& task, uint8_t* into, ReadResult* result) {
  uint64_t total = kRecordHeaderBytes + task.payloadBytes;
  uint8_t headerBytes[kRecordHeaderBytes];
  uint8_t* head = headerBytes;
  uint8_t* base = nullptr;
  if (into == nullptr) {
    base = static_cast<uint8_t*>(std::malloc(static_cast<size_t>(total)));
    if (base == nullptr) std::abort();
    head = base;
    into = base + kRecordHeaderBytes;
  }
  struct iovec iov[2] = {{head, kRecordHeaderBytes}, {into, task.payloadBytes}};
  size_t got = 0;
  int err = PreadvFull(task.segment->fd, iov, 2, task.offset, &got);
  if (err != 0) {
    std::free(base);
    return Code::kIo;
  }
  RecordHeader header;
  bool ok = got == total;
  if (ok) {
    std::memcpy(&header, head, sizeof(header));
    ok = header.magic == kRecordMagic && header.kind == kRecordBlock && header.payloadBytes == task.payloadBytes &&
         header.seqNo == task.seqNo && std::memcmp(header.key, task.key.bytes.data(), kKeyBytes) == 0 &&
         header.checksum == ChecksumRecord(header, into, task.payloadBytes);
  }
  if (!ok) {
    std::free(base);
    return Code::kCorrupt;
  }
  result->base = base;
  result->payloadBytes = task.payloadBytes;
  result->code = Code::kOk;
  return Code::kOk;
}

std::vector<ReadResult> Store::GetMany(const std::vector<Key>& keys) { return GetManyInto(keys, nullptr, 0); }

std::vector<ReadResult> Store::GetManyInto(const std::vector<Key>& keys, uint8_t* arena, size_t arenaBytes) {
  std::vector<ReadResult> results(keys.size());
  if (!Enter()) {
    for (auto& result : results) result.code = Code::kClosed;
    return results;
  }
  std::vector<ReadTask> tasks;
  std::vector<size_t> taskKey;
  tasks.reserve(keys.size());
  {
    std::lock_guard<std::mutex> meta(metaMu_);
    for (size_t i = 0; i < keys.size(); ++i) {
      auto found = index_.find(keys[i]);
      if (found == index_.end()) {
        results[i].code = Code::kNotFound;
        stats_.misses += 1;
        continue;
      }
      Entry* entry = found->second.get();
      entry->accessTick = accessTick_++;
      UnlinkLocked(entry);
      LinkMruLocked(entry);
      ReadTask task;
      task.key = keys[i];
      task.segment = segments_.at(entry->segmentId);
      task.offset = entry->offset;
      task.payloadBytes = entry->payloadBytes;
      task.seqNo = entry->seqNo;
      tasks.push_back(std::move(task));
      taskKey.push_back(i);
    }
  }
  // Announce every range first: the kernel starts all of them at once, so the
  // device sees a deep queue even with few reader threads.
  if (tasks.size() > 1) {
    for (const ReadTask& task : tasks) {
      ::posix_fadvise(task.segment->fd, static_cast<off_t>(task.offset),
                      static_cast<off_t>(kRecordHeaderBytes + task.payloadBytes), POSIX_FADV_WILLNEED);
    }
  }
  // Places in the arena are handed out in key order before any read starts. Alignment
  // is of addresses, so the arena's own offset decides the padding before the first.
  std::vector<uint8_t*> into(tasks.size(), nullptr);
  if (arena != nullptr) {
    auto address = reinterpret_cast<uintptr_t>(arena);
    uint64_t used = ((address + kArenaAlign - 1) & ~uintptr_t{kArenaAlign - 1}) - address;
    for (size_t t = 0; t < tasks.size(); ++t) {
      uint64_t bytes = tasks[t].payloadBytes;
      if (used + bytes > arenaBytes) continue;
      into[t] = arena + used;
      used += (bytes + kArenaAlign - 1) & ~uint64_t{kArenaAlign - 1};
    }
  }
  RunParallel(tasks.size(), [&](size_t t) {
    ReadResult& result = results[taskKey[t]];
    result.code = ReadVerified(tasks[t], into[t], &result);
    if (result.code == Code::kOk && into[t] != nullptr) result.arenaOffset = static_cast<uint64_t>(into[t] - arena);
  });
  {
    std::lock_guard<std::mutex> meta(metaMu_);
    for (size_t t = 0; t < tasks.size(); ++t) {
      ReadResult& result = results[taskKey[t]];
      if (result.code == Code::kOk) {
        stats_.hits += 1;
        dirtySinceCheckpoint_ = true;  // recency changed; saved approximately, at the next checkpoint
        continue;
      }
      if (result.code == Code::kIo) {
        // A failed read says nothing about the bytes; keep the block and count it.
        result.code = Code::kIo;
        stats_.readErrors += 1;
        continue;
      }
      const ReadTask& task = tasks[t];
      auto found = index_.find(task.key);
      if (found != index_.end() && found->second->seqNo == task.seqNo &&
          found->second->segmentId == task.segment->id && found->second->offset == task.offset) {
        DropLocked(found->second.get());
        stats_.corruptions += 1;
      }
    }
  }
  Leave();
  return results;
}

// ---- metadata -----------------------------------------------------------------

bool Store::Has(const Key& key) {
  std::lock_guard<std::mutex> meta(metaMu_);
  return index_.count(key) != 0;
}

Code Store::Pin(const Key& key, bool hard, uint64_t ttlMs) {
  std::lock_guard<std::mutex> meta(metaMu_);
  if (metaClosed_) return Code::kClosed;
  auto found = index_.find(key);
  if (found == index_.end()) return Code::kNotFound;
  Entry* entry = found->second.get();
  uint64_t now = Now();
  if (!IsPinnedLocked(*entry, now)) {
    uint64_t pinnedBytes = 0;
    for (auto it = pinned_.begin(); it != pinned_.end();) {
      if (!IsPinnedLocked(**it, now)) {
        it = pinned_.erase(it);
        continue;
      }
      pinnedBytes += (*it)->recordBytes();
      ++it;
    }
    if (pinnedBytes + entry->recordBytes() > options_.pinnedBytesMax) return Code::kCapacity;
  }
  if (hard) {
    entry->hardPin = true;
  } else {
    entry->pinUntilMs = std::max(entry->pinUntilMs, now + ttlMs);
  }
  pinned_.insert(entry);
  dirtySinceCheckpoint_ = true;
  return Code::kOk;
}

bool Store::Unpin(const Key& key) {
  std::lock_guard<std::mutex> meta(metaMu_);
  auto found = index_.find(key);
  if (found == index_.end()) return false;
  Entry* entry = found->second.get();
  entry->hardPin = false;
  entry->pinUntilMs = 0;
  pinned_.erase(entry);
  dirtySinceCheckpoint_ = true;
  return true;
}

std::vector<Key> Store::Keys() {
  std::lock_guard<std::mutex> meta(metaMu_);
  std::vector<Key> keys;
  keys.reserve(index_.size());
  for (Entry* entry = lru_->next; entry != lru_.get(); entry = entry->next) keys.push_back(entry->key);
  return keys;
}

Stats Store::GetStats() {
  Stats stats;
  {
    std::lock_guard<std::mutex> meta(metaMu_);
    stats = stats_;
    stats.bytes = DiskBytesLocked();
    stats.liveBytes = liveBytes_;
    stats.blocks = index_.size();
    stats.segments = segments_.size();
    uint64_t now = Now();
    for (Entry* entry : pinned_) {
      if (!IsPinnedLocked(*entry, now)) continue;
      stats.pinnedBlocks += 1;
      stats.pinnedBytes += entry->recordBytes();
    }
  }
  std::lock_guard<std::mutex> life(lifeMu_);
  stats.queueDepth = inflight_;
  return stats;
}

// ---- read pool ----------------------------------------------------------------

void Store::StartReadPool() {
  for (uint32_t i = 0; i < options_.readThreads; ++i) {
    poolThreads_.emplace_back([this] {
      for (;;) {
        std::function<void()> job;
        {
          std::unique_lock<std::mutex> lock(poolMu_);
          poolCv_.wait(lock, [this] { return poolStop_ || !poolJobs_.empty(); });
          if (poolJobs_.empty()) return;
          job = std::move(poolJobs_.back());
          poolJobs_.pop_back();
        }
        job();
      }
    });
  }
}

void Store::StopReadPool() {
  {
    std::lock_guard<std::mutex> lock(poolMu_);
    poolStop_ = true;
  }
  poolCv_.notify_all();
  for (auto& thread : poolThreads_) thread.join();
  poolThreads_.clear();
}

void Store::RunParallel(size_t count, const std::function<void(size_t)>& work) {
  if (count == 0) return;
  // Workers claim items from a shared counter; the caller works too, so progress
  // never depends on a free pool thread.
  struct Shared {
    std::atomic<size_t> next{0};
    std::mutex mu;
    std::condition_variable cv;
    size_t running = 0;
  };
  auto shared = std::make_shared<Shared>();
  auto drain = [shared, count, &work] {
    for (size_t i = shared->next.fetch_add(1); i < count; i = shared->next.fetch_add(1)) work(i);
  };
  size_t helpers = std::min<size_t>(poolThreads_.size(), count - 1);
  {
    std::lock_guard<std::mutex> lock(shared->mu);
    shared->running = helpers;
  }
  {
    std::lock_guard<std::mutex> lock(poolMu_);
    for (size_t h = 0; h < helpers; ++h) {
      poolJobs_.push_back([shared, drain] {
        drain();
        std::lock_guard<std::mutex> lock(shared->mu);
        if (--shared->running == 0) shared->cv.notify_all();
      });
    }
  }
  poolCv_.notify_all();
  drain();
  std::unique_lock<std::mutex> lock(shared->mu);
  shared->cv.wait(lock, [&] { return shared->running == 0; });
}

}  // namespace kvstore
