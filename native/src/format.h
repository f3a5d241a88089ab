// On-disk layout of the block store. native/FORMAT.md documents every byte;
// the static_asserts below keep the code and that document in step.
#pragma once

#include <cstddef>
#include <cstdint>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "kvpark's store writes little-endian structs with memcpy; big-endian hosts need byte swaps"
#endif

namespace kvstore {

// Version 1 is the only format so far. A file records the version that wrote it
// and the oldest reader version that can read it (SQLite's read/write version
// bytes): a future v2 that only adds fields can keep readVersionMin at 1.
constexpr uint16_t kFormatVersion = 1;

constexpr size_t kKeyBytes = 32;
constexpr uint64_t kFileAlignBytes = 4096;  // accounting unit: one filesystem block

// --- Segment file: seg-XXXXXXXX.kvs ------------------------------------------
constexpr char kSegmentMagic[8] = {'K', 'V', 'P', 'K', 'S', 'E', 'G', '\0'};

struct SegmentHeader {
  char magic[8];
  uint16_t formatVersion;
  uint16_t readVersionMin;
  uint32_t flags;  // none defined; must be 0
  uint32_t segmentId;
  uint32_t headerBytes;  // sizeof(SegmentHeader); records start here
  uint8_t reserved[32];  // zero
  uint64_t checksum;     // XXH3-64 of bytes [0, 56)
};
static_assert(sizeof(SegmentHeader) == 64, "segment header is 64 bytes");
static_assert(offsetof(SegmentHeader, formatVersion) == 8, "layout");
static_assert(offsetof(SegmentHeader, readVersionMin) == 10, "layout");
static_assert(offsetof(SegmentHeader, flags) == 12, "layout");
static_assert(offsetof(SegmentHeader, segmentId) == 16, "layout");
static_assert(offsetof(SegmentHeader, headerBytes) == 20, "layout");
static_assert(offsetof(SegmentHeader, reserved) == 24, "layout");
static_assert(offsetof(SegmentHeader, checksum) == 56, "layout");

// --- Record inside a segment ---------------------------------------------------
constexpr uint32_t kRecordMagic = 0x4352564bu;  // "KVRC" read as little-endian bytes
constexpr uint16_t kRecordBlock = 1;
constexpr uint16_t kRecordTombstone = 2;
// Hard ceiling on one payload regardless of options, so a damaged length field
// can never make recovery allocate or skip gigabytes.
constexpr uint32_t kPayloadBytesLimit = 1u << 30;

struct RecordHeader {
  uint32_t magic;
  uint16_t kind;      // kRecordBlock or kRecordTombstone
  uint16_t reserved0; // zero
  uint32_t payloadBytes;
  uint32_t reserved1; // zero
  uint64_t seqNo;
  uint8_t key[kKeyBytes];
  uint64_t checksum;  // XXH3-64 of header bytes [0, 56) followed by the payload
};
static_assert(sizeof(RecordHeader) == 64, "record header is 64 bytes");
static_assert(offsetof(RecordHeader, kind) == 4, "layout");
static_assert(offsetof(RecordHeader, payloadBytes) == 8, "layout");
static_assert(offsetof(RecordHeader, seqNo) == 16, "layout");
static_assert(offsetof(RecordHeader, key) == 24, "layout");
static_assert(offsetof(RecordHeader, checksum) == 56, "layout");
constexpr size_t kRecordChecksummedHeaderBytes = offsetof(RecordHeader, checksum);

// --- Index checkpoint: INDEX ---------------------------------------------------
constexpr char kIndexMagic[8] = {'K', 'V', 'P', 'K', 'I', 'D', 'X', '\0'};

struct IndexHeader {
  char magic[8];
  uint16_t formatVersion;
  uint16_t readVersionMin;
  uint32_t flags;  // none defined; must be 0
  uint64_t entryCount;
  uint32_t replaySegmentId;  // recovery replays records from here on
  uint32_t nextSegmentId;
  uint64_t replayOffset;
  uint64_t nextSeqNo;
  uint64_t accessTick;
  uint32_t entryBytes;   // sizeof(IndexEntry)
  uint8_t reserved[12];  // zero
  uint64_t checksum;     // XXH3-64 of header bytes [0, 72) followed by all entries
};
static_assert(sizeof(IndexHeader) == 80, "index header is 80 bytes");
static_assert(offsetof(IndexHeader, entryCount) == 16, "layout");
static_assert(offsetof(IndexHeader, replaySegmentId) == 24, "layout");
static_assert(offsetof(IndexHeader, nextSegmentId) == 28, "layout");
static_assert(offsetof(IndexHeader, replayOffset) == 32, "layout");
static_assert(offsetof(IndexHeader, nextSeqNo) == 40, "layout");
static_assert(offsetof(IndexHeader, accessTick) == 48, "layout");
static_assert(offsetof(IndexHeader, entryBytes) == 56, "layout");
static_assert(offsetof(IndexHeader, reserved) == 60, "layout");
static_assert(offsetof(IndexHeader, checksum) == 72, "layout");
constexpr size_t kIndexChecksummedHeaderBytes = offsetof(IndexHeader, checksum);
constexpr size_t kSegmentChecksummedHeaderBytes = offsetof(SegmentHeader, checksum);

constexpr uint32_t kIndexEntryHardPin = 1u;

struct IndexEntry {
  uint8_t key[kKeyBytes];
  uint32_t segmentId;
  uint32_t payloadBytes;
  uint64_t offset;  // of the record header inside the segment
  uint64_t seqNo;
  uint64_t accessTick;  // LRU recency; larger = used more recently
  uint64_t pinUntilMs;  // soft pin expiry, Unix ms; 0 = none
  uint32_t flags;       // kIndexEntryHardPin
  uint32_t reserved;    // zero
};
static_assert(sizeof(IndexEntry) == 80, "index entry is 80 bytes");
static_assert(offsetof(IndexEntry, segmentId) == 32, "layout");
static_assert(offsetof(IndexEntry, payloadBytes) == 36, "layout");
static_assert(offsetof(IndexEntry, offset) == 40, "layout");
static_assert(offsetof(IndexEntry, seqNo) == 48, "layout");
static_assert(offsetof(IndexEntry, accessTick) == 56, "layout");
static_assert(offsetof(IndexEntry, pinUntilMs) == 64, "layout");
static_assert(offsetof(IndexEntry, flags) == 72, "layout");

inline uint64_t RoundUpToBlock(uint64_t bytes) {
  return (bytes + kFileAlignBytes - 1) / kFileAlignBytes * kFileAlignBytes;
}

}  // namespace kvstore
