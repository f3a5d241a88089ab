// Test driver for the pure C++ core, built without Node under AddressSanitizer
// and UndefinedBehaviorSanitizer (or ThreadSanitizer) by native/sanitize.sh.
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "../src/store.h"

using kvstore::Code;
using kvstore::Key;
using kvstore::Options;
using kvstore::Store;
using kvstore::WriteOp;

namespace {

int failures = 0;

#define CHECK(cond)                                                          \
  do {                                                                       \
    if (!(cond)) {                                                           \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                            \
    }                                                                        \
  } while (0)

#define CHECK_EQ(a, b)                                                                         \
  do {                                                                                         \
    auto va = (a);                                                                             \
    auto vb = (b);                                                                             \
    if (!(va == vb)) {                                                                         \
      std::fprintf(stderr, "%s:%d: CHECK_EQ failed: %s (%lld) != %s (%lld)\n", __FILE__, __LINE__, #a, \
                   static_cast<long long>(va), #b, static_cast<long long>(vb));                \
      ++failures;                                                                              \
    }                                                                                          \
  } while (0)

std::string TempDir(const char* label) {
  std::string pattern = std::string("/tmp/kvpark-core-") + label + "-XXXXXX";
  std::vector<char> buffer(pattern.begin(), pattern.end());
  buffer.push_back('\0');
  if (mkdtemp(buffer.data()) == nullptr) std::abort();
  return buffer.data();
}

void RemoveDir(const std::string& dir) {
  std::string command = "rm -rf '" + dir + "'";
  if (std::system(command.c_str()) != 0) std::abort();
}

void CopyDir(const std::string& from, const std::string& to) {
  std::string command = "cp -a '" + from + "/.' '" + to + "/'";
  if (std::system(command.c_str()) != 0) std::abort();
}

Key KeyOf(uint64_t n) {
  Key key;
  for (size_t i = 0; i < key.bytes.size(); ++i) key.bytes[i] = static_cast<uint8_t>((n >> ((i % 8) * 8)) ^ (i * 37));
  return key;
}

// Payload bytes and length derived from the key, so any reader can check them.
std::vector<uint8_t> PayloadOf(const Key& key, uint32_t bytesMin, uint32_t bytesMax) {
  uint64_t seed;
  std::memcpy(&seed, key.bytes.data(), sizeof(seed));
  std::mt19937_64 random(seed);
  uint32_t bytes = bytesMin + static_cast<uint32_t>(random() % (bytesMax - bytesMin + 1));
  std::vector<uint8_t> out(bytes);
  for (auto& b : out) b = static_cast<uint8_t>(random());
  return out;
}

bool Matches(const kvstore::ReadResult& result, const std::vector<uint8_t>& expected) {
  return result.code == Code::kOk && result.payloadBytes == expected.size() &&
         std::memcmp(result.base + kvstore::ReadResult::kPayloadOffset, expected.data(), expected.size()) == 0;
}

uint64_t DirRoundedBytes(const std::string& dir) {
  uint64_t total = 0;
  DIR* listing = opendir(dir.c_str());
  if (listing == nullptr) return 0;
  while (struct dirent* item = readdir(listing)) {
    if (item->d_name[0] == '.') continue;
    struct stat st;
    if (stat((dir + "/" + item->d_name).c_str(), &st) == 0) total += kvstore::RoundUpToBlock(st.st_size);
  }
  closedir(listing);
  return total;
}

Options SmallOptions() {
  Options options;
  options.bytesMax = 4ull << 20;
  options.segmentBytes = 256ull << 10;
  options.readThreads = 4;
  return options;
}

std::shared_ptr<Store> MustOpen(const std::string& dir, const Options& options) {
  kvstore::OpenError error;
  auto store = Store::Open(dir, options, &error);
  if (!store) {
    std::fprintf(stderr, "open %s failed: %s %s\n", dir.c_str(), kvstore::CodeName(error.code), error.message.c_str());
    std::abort();
  }
  return store;
}

std::vector<Code> Put(Store& store, const std::vector<Key>& keys, uint32_t bytesMin, uint32_t bytesMax) {
  std::vector<std::vector<uint8_t>> payloads;
  std::vector<WriteOp> ops;
  for (const Key& key : keys) payloads.push_back(PayloadOf(key, bytesMin, bytesMax));
  for (size_t i = 0; i < keys.size(); ++i) {
    WriteOp op;
    op.key = keys[i];
    op.payload = payloads[i].data();
    op.payloadBytes = static_cast<uint32_t>(payloads[i].size());
    ops.push_back(op);
  }
  return store.Write(ops);
}

void FreeAll(std::vector<kvstore::ReadResult>& results) {
  for (auto& result : results) std::free(result.base);
}

void TestRoundTripAndReopen() {
  std::string dir = TempDir("roundtrip");
  std::vector<Key> keys;
  for (uint64_t i = 0; i < 200; ++i) keys.push_back(KeyOf(i));
  {
    auto store = MustOpen(dir, SmallOptions());
    for (Code code : Put(*store, keys, 0, 9000)) CHECK(code == Code::kOk);
    WriteOp del;
    del.key = keys[7];
    del.isDelete = true;
    CHECK(store->Write({del})[0] == Code::kOk);
    CHECK(store->Write({del})[0] == Code::kNotFound);
    kvstore::OpenError error;
    CHECK(Store::Open(dir, SmallOptions(), &error) == nullptr);
    CHECK(error.code == Code::kLocked);
    store->Close();
  }
  auto store = MustOpen(dir, SmallOptions());
  auto results = store->GetMany(keys);
  for (size_t i = 0; i < keys.size(); ++i) {
    if (i == 7) {
      CHECK(results[i].code == Code::kNotFound);
    } else {
      CHECK(Matches(results[i], PayloadOf(keys[i], 0, 9000)));
    }
  }
  FreeAll(results);
  CHECK_EQ(store->GetStats().blocks, 199u);
  CHECK_EQ(store->GetStats().replayedRecords, 0u);
  store.reset();
  RemoveDir(dir);
}

// The payload as GetManyInto returned it: in the arena or, when it did not fit, malloc'd.
const uint8_t* PayloadIn(const kvstore::ReadResult& result, const uint8_t* arena) {
  if (result.arenaOffset == kvstore::ReadResult::kNotInArena)
    return result.base + kvstore::ReadResult::kPayloadOffset;
  return arena + result.arenaOffset;
}

void TestGetManyInto() {
  std::string dir = TempDir("into");
  std::vector<Key> keys;
  for (uint64_t i = 0; i < 120; ++i) keys.push_back(KeyOf(5000 + i));
  auto store = MustOpen(dir, SmallOptions());
  for (Code code : Put(*store, keys, 0, 9000)) CHECK(code == Code::kOk);
  std::vector<Key> asked = keys;
  asked.insert(asked.begin() + 3, KeyOf(999999));  // never written
  size_t needed = kvstore::kArenaAlign - 1;
  for (const Key& key : keys) {
    size_t bytes = PayloadOf(key, 0, 9000).size();
    needed += (bytes + kvstore::kArenaAlign - 1) / kvstore::kArenaAlign * kvstore::kArenaAlign;
  }
  std::vector<uint8_t> memory(needed + 1);
  // Off by one from malloc's alignment, so the first payload needs padding.
  uint8_t* arena = memory.data() + 1;
  for (size_t arenaBytes : {needed, needed / 2, size_t{0}}) {
    auto results = store->GetManyInto(asked, arenaBytes == 0 ? nullptr : arena, arenaBytes);
    CHECK_EQ(results.size(), asked.size());
    CHECK(results[3].code == Code::kNotFound);
    size_t inArena = 0;
    uint64_t end = 0;
    for (size_t i = 0; i < asked.size(); ++i) {
      if (i == 3) continue;
      const kvstore::ReadResult& result = results[i];
      std::vector<uint8_t> expected = PayloadOf(asked[i], 0, 9000);
      CHECK(result.code == Code::kOk);
      CHECK_EQ(result.payloadBytes, expected.size());
      if (result.code != Code::kOk || result.payloadBytes != expected.size()) continue;
      CHECK(std::memcmp(PayloadIn(result, arena), expected.data(), expected.size()) == 0);
      if (result.arenaOffset == kvstore::ReadResult::kNotInArena) continue;
      inArena += 1;
      CHECK(result.base == nullptr);
      // In key order, aligned, without overlap, inside the arena.
      CHECK(result.arenaOffset >= end);
      CHECK_EQ(reinterpret_cast<uintptr_t>(arena + result.arenaOffset) % kvstore::kArenaAlign, 0u);
      end = result.arenaOffset + result.payloadBytes;
      CHECK(end <= arenaBytes);
    }
    if (arenaBytes == needed) CHECK_EQ(inArena, keys.size());
    if (arenaBytes == needed / 2) CHECK(inArena > 0 && inArena < keys.size());
    if (arenaBytes == 0) CHECK_EQ(inArena, 0u);
    FreeAll(results);
  }
  store->Close();
  auto closed = store->GetManyInto(keys, arena, needed);
  CHECK(closed[0].code == Code::kClosed);
  store.reset();
  RemoveDir(dir);
}

void TestTornTailAndCorruption() {
  std::string dir = TempDir("torn");
  std::string crashed = TempDir("torn-crashed");
  std::vector<Key> keys;
  for (uint64_t i = 0; i < 40; ++i) keys.push_back(KeyOf(1000 + i));
  Options options = SmallOptions();
  options.checkpointEveryBytes = 1ull << 30;
  {
    auto store = MustOpen(dir, options);
    Put(*store, keys, 100, 20000);
    CopyDir(dir, crashed);  // as a kill -9 would leave it: no final checkpoint
  }
  // Half a record appended at the end of the newest segment.
  std::string newest;
  DIR* listing = opendir(crashed.c_str());
  while (struct dirent* item = readdir(listing))
    if (std::strncmp(item->d_name, "seg-", 4) == 0 && newest < item->d_name) newest = item->d_name;
  closedir(listing);
  std::string path = crashed + "/" + newest;
  struct stat st;
  stat(path.c_str(), &st);
  {
    std::ofstream out(path, std::ios::binary | std::ios::app);
    const char partial[40] = {'K', 'V', 'R', 'C', 1, 0};
    out.write(partial, sizeof(partial));
  }
  auto store = MustOpen(crashed, options);
  auto stats = store->GetStats();
  CHECK_EQ(stats.truncatedBytes, 40u);
  CHECK_EQ(stats.replayedRecords, 40u);
  CHECK_EQ(stats.blocks, 40u);
  stat(path.c_str(), &st);

  // Flip one payload byte of keys[5]: that read fails, every other verifies.
  {
    auto before = store->GetMany({keys[5]});
    CHECK(before[0].code == Code::kOk);
    FreeAll(before);
  }
  std::string command = "python3 - <<'EOF'\nimport glob\nfor f in sorted(glob.glob('" + crashed +
                        "/seg-*.kvs')):\n    b=bytearray(open(f,'rb').read())\n    i=b.find(bytes.fromhex('" +
                        [&] {
                          char hex[65];
                          for (int i = 0; i < 32; ++i) std::snprintf(hex + 2 * i, 3, "%02x", keys[5].bytes[i]);
                          return std::string(hex);
                        }() +
                        "'))\n    if i>=0:\n        b[i+40]^=0x10\n        open(f,'r+b').write(b)\nEOF";
  CHECK(std::system(command.c_str()) == 0);
  auto results = store->GetMany(keys);
  for (size_t i = 0; i < keys.size(); ++i) {
    if (i == 5) {
      CHECK(results[i].code == Code::kCorrupt);
    } else {
      CHECK(Matches(results[i], PayloadOf(keys[i], 100, 20000)));
    }
  }
  FreeAll(results);
  CHECK_EQ(store->GetStats().corruptions, 1u);
  auto again = store->GetMany({keys[5]});
  CHECK(again[0].code == Code::kNotFound);
  FreeAll(again);
  store.reset();
  RemoveDir(dir);
  RemoveDir(crashed);
}

void TestCapAndPins() {
  std::string dir = TempDir("cap");
  Options options = SmallOptions();
  auto store = MustOpen(dir, options);
  std::vector<Key> pinned = {KeyOf(5000), KeyOf(5001)};
  Put(*store, pinned, 30000, 30000);
  CHECK(store->Pin(pinned[0], true, 0) == Code::kOk);
  CHECK(store->Pin(pinned[1], false, 3600 * 1000) == Code::kOk);
  CHECK(store->Pin(KeyOf(4999), true, 0) == Code::kNotFound);
  uint64_t written = 0;
  uint64_t maxDisk = 0;
  for (uint64_t i = 0; written < 3 * options.bytesMax; ++i) {
    std::vector<Key> batch = {KeyOf(6000 + 2 * i), KeyOf(6001 + 2 * i)};
    for (Code code : Put(*store, batch, 5000, 40000)) CHECK(code == Code::kOk);
    for (const Key& key : batch) written += PayloadOf(key, 5000, 40000).size();
    maxDisk = std::max(maxDisk, DirRoundedBytes(dir));
    CHECK(store->GetStats().bytes <= options.bytesMax);
  }
  CHECK(maxDisk <= options.bytesMax);
  auto stats = store->GetStats();
  CHECK(stats.evictions > 0);
  CHECK(stats.compactions > 0);
  CHECK_EQ(stats.pinnedBlocks, 2u);
  auto results = store->GetMany(pinned);
  CHECK(Matches(results[0], PayloadOf(pinned[0], 30000, 30000)));
  CHECK(Matches(results[1], PayloadOf(pinned[1], 30000, 30000)));
  FreeAll(results);
  store.reset();
  RemoveDir(dir);
}

// Readers race a writer that overwrites, deletes, evicts and compacts; every
// payload a reader gets must be exactly the one derived from its key.
void TestConcurrentReadersAndWriter() {
  std::string dir = TempDir("concurrent");
  Options options = SmallOptions();
  auto store = MustOpen(dir, options);
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> verified{0};
  std::atomic<uint64_t> wrong{0};
  std::vector<std::thread> readers;
  for (int r = 0; r < 3; ++r) {
    readers.emplace_back([&, r] {
      std::mt19937 random(r);
      while (!stop.load()) {
        std::vector<Key> keys;
        for (int i = 0; i < 16; ++i) keys.push_back(KeyOf(random() % 400));
        auto results = store->GetMany(keys);
        for (size_t i = 0; i < keys.size(); ++i) {
          if (results[i].code == Code::kOk) {
            if (Matches(results[i], PayloadOf(keys[i], 1000, 30000))) {
              verified.fetch_add(1);
            } else {
              wrong.fetch_add(1);
            }
          } else if (results[i].code != Code::kNotFound) {
            wrong.fetch_add(1);
          }
        }
        FreeAll(results);
        store->Has(keys[0]);
        store->Pin(keys[1], false, 5);
        store->GetStats();
      }
    });
  }
  std::mt19937 random(99);
  for (int round = 0; round < 300; ++round) {
    std::vector<Key> batch;
    for (int i = 0; i < 4; ++i) batch.push_back(KeyOf(random() % 400));
    Put(*store, batch, 1000, 30000);
    WriteOp del;
    del.key = KeyOf(random() % 400);
    del.isDelete = true;
    store->Write({del});
    CHECK(store->GetStats().bytes <= options.bytesMax);
  }
  stop.store(true);
  for (auto& reader : readers) reader.join();
  CHECK_EQ(wrong.load(), 0u);
  CHECK(verified.load() > 0);
  CHECK(store->GetStats().evictions > 0);
  store->Close();
  auto reopened = MustOpen(dir, options);
  auto keys = reopened->Keys();
  auto results = reopened->GetMany(keys);
  for (size_t i = 0; i < keys.size(); ++i) CHECK(Matches(results[i], PayloadOf(keys[i], 1000, 30000)));
  FreeAll(results);
  reopened.reset();
  RemoveDir(dir);
}

std::vector<uint8_t> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void WriteFile(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

void FlipBit(const std::string& path, size_t offset, int bit) {
  auto bytes = ReadFile(path);
  if (offset >= bytes.size()) std::abort();
  bytes[offset] ^= static_cast<uint8_t>(1u << bit);
  WriteFile(path, bytes);
}

std::vector<std::string> SegmentPaths(const std::string& dir) {
  std::vector<std::string> names;
  DIR* listing = opendir(dir.c_str());
  while (struct dirent* item = readdir(listing)) {
    std::string name = item->d_name;
    if (name.size() == 16 && name.compare(0, 4, "seg-") == 0) names.push_back(dir + "/" + name);
  }
  closedir(listing);
  std::sort(names.begin(), names.end());
  return names;
}

// Offsets of the records in a segment, by FORMAT.md.
std::vector<size_t> RecordOffsets(const std::string& path) {
  auto bytes = ReadFile(path);
  std::vector<size_t> offsets;
  for (size_t at = 64; at + 64 <= bytes.size();) {
    offsets.push_back(at);
    uint32_t payloadBytes;
    std::memcpy(&payloadBytes, bytes.data() + at + 8, 4);
    at += 64 + payloadBytes;
  }
  return offsets;
}

void TestRefusesNewerFormat() {
  std::string dir = TempDir("format");
  {
    auto store = MustOpen(dir, SmallOptions());
    Put(*store, {KeyOf(1)}, 10, 10);
  }
  // readVersionMin = 2 without a matching checksum: damage, not a newer format. The
  // INDEX is ignored and rebuilt; the block is still there.
  std::string index = dir + "/INDEX";
  auto bytes = ReadFile(index);
  bytes[10] = 2;
  WriteFile(index, bytes);
  {
    auto store = MustOpen(dir, SmallOptions());
    CHECK_EQ(store->GetStats().indexRebuilds, 1u);
    CHECK_EQ(store->GetStats().blocks, 1u);
  }
  // The same with a checksum that verifies: a newer format, refused untouched.
  bytes = ReadFile(index);
  bytes[10] = 2;
  std::vector<uint8_t> covered(bytes.begin(), bytes.begin() + 72);
  covered.insert(covered.end(), bytes.begin() + 80, bytes.end());
  uint64_t digest = XXH3_64bits(covered.data(), covered.size());
  std::memcpy(bytes.data() + 72, &digest, 8);
  WriteFile(index, bytes);
  kvstore::OpenError error;
  CHECK(Store::Open(dir, SmallOptions(), &error) == nullptr);
  CHECK(error.code == Code::kFormat);
  CHECK(error.message.find("needs format reader version 2") != std::string::npos);
  CHECK(ReadFile(index) == bytes);
  RemoveDir(dir);
}

// A flipped bit in a segment header sets that segment aside; the rest opens.
void TestQuarantine() {
  std::string dir = TempDir("quarantine");
  Options options = SmallOptions();
  options.segmentBytes = 64ull << 10;
  std::vector<Key> keys;
  for (uint64_t i = 0; i < 30; ++i) keys.push_back(KeyOf(7000 + i));
  {
    auto store = MustOpen(dir, options);
    for (Code code : Put(*store, keys, 5000, 9000)) CHECK(code == Code::kOk);
  }
  auto segments = SegmentPaths(dir);
  CHECK(segments.size() >= 3);
  size_t lost = RecordOffsets(segments[1]).size();
  FlipBit(segments[1], 2, 0);  // the magic
  auto store = MustOpen(dir, options);
  auto stats = store->GetStats();
  CHECK_EQ(stats.quarantinedSegments, 1u);
  CHECK(stats.quarantinedFiles.size() == 1 && stats.quarantinedFiles[0] == segments[1].substr(dir.size() + 1) + ".quarantined");
  CHECK(stats.openWarnings.size() == 1);
  CHECK_EQ(stats.blocks, keys.size() - lost);
  CHECK(access((segments[1] + ".quarantined").c_str(), F_OK) == 0);
  auto results = store->GetMany(keys);
  size_t ok = 0;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (results[i].code == Code::kOk) {
      CHECK(Matches(results[i], PayloadOf(keys[i], 5000, 9000)));
      ++ok;
    } else {
      CHECK(results[i].code == Code::kNotFound);
    }
  }
  CHECK_EQ(ok, keys.size() - lost);
  FreeAll(results);
  store.reset();
  RemoveDir(dir);
}

// Replay without INDEX steps over a damaged record to the next one that verifies.
void TestResync() {
  std::string dir = TempDir("resync");
  Options options = SmallOptions();
  std::vector<Key> keys;
  for (uint64_t i = 0; i < 20; ++i) keys.push_back(KeyOf(8000 + i));
  {
    auto store = MustOpen(dir, options);
    for (Code code : Put(*store, keys, 100, 3000)) CHECK(code == Code::kOk);
  }
  auto segments = SegmentPaths(dir);
  CHECK_EQ(segments.size(), 1u);
  auto offsets = RecordOffsets(segments[0]);
  CHECK_EQ(offsets.size(), keys.size());
  FlipBit(segments[0], offsets[6] + 10, 3);  // a high bit of payloadBytes
  FlipBit(segments[0], offsets[13], 0);      // the magic
  std::remove((dir + "/INDEX").c_str());
  auto store = MustOpen(dir, options);
  auto stats = store->GetStats();
  CHECK_EQ(stats.blocks, keys.size() - 2);
  CHECK_EQ(stats.badRecords, 2u);
  CHECK_EQ(stats.truncatedBytes, 0u);
  auto results = store->GetMany(keys);
  for (size_t i = 0; i < keys.size(); ++i) {
    if (i == 6 || i == 13) {
      CHECK(results[i].code == Code::kNotFound);
    } else {
      CHECK(Matches(results[i], PayloadOf(keys[i], 100, 3000)));
    }
  }
  FreeAll(results);
  store.reset();
  RemoveDir(dir);
}

// Injected write faults under a concurrent reader: only the writes they hit fail, and
// a crash image and a clean reopen find every block reported persisted.
void TestWriteFaults() {
  std::string dir = TempDir("faults");
  std::string crashed = TempDir("faults-crashed");
  Options options = SmallOptions();
  options.segmentBytes = 64ull << 10;
  options.checkpointEveryBytes = 100000;
  std::vector<Key> persisted;
  std::vector<Key> all;
  {
    auto store = MustOpen(dir, options);
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> wrong{0};
    std::thread reader([&] {
      while (!stop.load()) {
        auto keys = store->Keys();
        auto results = store->GetMany(keys);
        for (size_t i = 0; i < keys.size(); ++i)
          if (results[i].code == Code::kOk && !Matches(results[i], PayloadOf(keys[i], 500, 6000))) wrong.fetch_add(1);
        FreeAll(results);
        store->GetStats();
      }
    });
    const char* specs[] = {
        "op=write,file=segment,skip=1,errno=ENOSPC",
        "op=write,file=segment,skip=2,errno=EIO,bytes=100;op=truncate,file=segment,errno=EIO",
        "op=sync,file=segment,errno=EIO",
        "op=create,file=any,errno=ENOSPC",
        "op=write,file=index,errno=ENOSPC;op=rename,file=index,skip=1,errno=EIO",
        "op=sync,file=dir,errno=EIO",
        "",
    };
    std::mt19937 random(5);
    for (int round = 0; round < 80; ++round) {
      std::string error;
      auto faults = kvstore::FaultInjector::Parse(specs[random() % 7], &error);
      CHECK(faults != nullptr);
      store->SetFaults(faults);
      std::vector<Key> batch;
      for (int i = 0; i < 4; ++i) batch.push_back(KeyOf(9000 + 4 * round + i));
      auto codes = Put(*store, batch, 500, 6000);
      for (size_t i = 0; i < batch.size(); ++i) {
        CHECK(codes[i] == Code::kOk || codes[i] == Code::kIo);
        if (codes[i] == Code::kOk) persisted.push_back(batch[i]);
        all.push_back(batch[i]);
      }
      store->SetFaults(nullptr);
    }
    stop.store(true);
    reader.join();
    CHECK_EQ(wrong.load(), 0u);
    auto stats = store->GetStats();
    CHECK(stats.writeErrors > 0);
    CHECK_EQ(stats.writeErrors, stats.writeErrorsEnospc + stats.writeErrorsEio + stats.writeErrorsOther);
    CHECK(persisted.size() > all.size() / 2);
    CopyDir(dir, crashed);
    store->Close();
  }
  std::string error;
  CHECK(kvstore::FaultInjector::Parse("op=scribble,errno=EIO", &error) == nullptr);
  CHECK(kvstore::FaultInjector::Parse("op=write", &error) == nullptr);
  for (const std::string& where : {crashed, dir}) {
    auto store = MustOpen(where, options);
    auto results = store->GetMany(persisted);
    for (size_t i = 0; i < persisted.size(); ++i) CHECK(Matches(results[i], PayloadOf(persisted[i], 500, 6000)));
    FreeAll(results);
    results = store->GetMany(all);
    for (size_t i = 0; i < all.size(); ++i)
      CHECK(results[i].code == Code::kNotFound || Matches(results[i], PayloadOf(all[i], 500, 6000)));
    FreeAll(results);
  }
  RemoveDir(dir);
  RemoveDir(crashed);
}

// Soft pins expire by the injected clock; a second opener is told who holds the lock.
void TestClockAndLock() {
  std::string dir = TempDir("clock");
  auto now = std::make_shared<std::atomic<uint64_t>>(1000000);
  Options options = SmallOptions();
  options.clock = [now] { return now->load(); };
  auto store = MustOpen(dir, options);
  Put(*store, {KeyOf(1)}, 100, 100);
  CHECK(store->Pin(KeyOf(1), false, 500) == Code::kOk);
  CHECK_EQ(store->GetStats().pinnedBlocks, 1u);
  now->store(1000499);
  CHECK_EQ(store->GetStats().pinnedBlocks, 1u);
  now->store(1000500);
  CHECK_EQ(store->GetStats().pinnedBlocks, 0u);
  kvstore::OpenError error;
  CHECK(Store::Open(dir, options, &error) == nullptr);
  CHECK(error.code == Code::kLocked);
  CHECK(error.message.find("held by pid " + std::to_string(getpid()) + " (this process)") != std::string::npos);
  store.reset();
  RemoveDir(dir);
}

}  // namespace

int main() {
  TestRoundTripAndReopen();
  TestGetManyInto();
  TestTornTailAndCorruption();
  TestCapAndPins();
  TestConcurrentReadersAndWriter();
  TestRefusesNewerFormat();
  TestQuarantine();
  TestResync();
  TestWriteFaults();
  TestClockAndLock();
  if (failures != 0) {
    std::fprintf(stderr, "core_test: %d check(s) failed\n", failures);
    return 1;
  }
  std::printf("core_test: all checks passed\n");
  return 0;
}
