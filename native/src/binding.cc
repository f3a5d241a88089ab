// The only file that knows about Node-API: it checks arguments again (the
// TypeScript facade validates first), moves payload I/O onto worker threads and
// converts results. Everything else lives in the pure core (store.h).
#include <napi.h>
#include <xxhash.h>

#include <atomic>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "allocator.h"
#include "store.h"

namespace {

using kvstore::Code;

#define REQUIRE_ARGUMENT_COUNT(info, count)                                          \
  if ((info).Length() < (count)) {                                                   \
    throw Napi::TypeError::New((info).Env(), "expected " #count " arguments");       \
  }
#define REQUIRE_ARGUMENT_BUFFER(info, index, name)                                   \
  if (!(info)[index].IsBuffer()) {                                                   \
    throw Napi::TypeError::New((info).Env(), "argument " #name " must be a Buffer"); \
  }
#define REQUIRE_ARGUMENT_STRING(info, index, name)                                   \
  if (!(info)[index].IsString()) {                                                   \
    throw Napi::TypeError::New((info).Env(), "argument " #name " must be a string"); \
  }
#define REQUIRE_ARGUMENT_OBJECT(info, index, name)                                    \
  if (!(info)[index].IsObject()) {                                                    \
    throw Napi::TypeError::New((info).Env(), "argument " #name " must be an object"); \
  }
#define REQUIRE_ARGUMENT_NUMBER(info, index, name)                                    \
  if (!(info)[index].IsNumber()) {                                                    \
    throw Napi::TypeError::New((info).Env(), "argument " #name " must be a number"); \
  }

Napi::Error CodedError(Napi::Env env, Code code, const std::string& message) {
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, kvstore::CodeName(code)));
  return error;
}

kvstore::Key KeyAt(const uint8_t* bytes) {
  kvstore::Key key;
  std::memcpy(key.bytes.data(), bytes, kvstore::kKeyBytes);
  return key;
}

kvstore::Key RequireKey(const Napi::CallbackInfo& info, size_t index) {
  REQUIRE_ARGUMENT_BUFFER(info, index, key);
  auto buffer = info[index].As<Napi::Buffer<uint8_t>>();
  if (buffer.Length() != kvstore::kKeyBytes) throw Napi::TypeError::New(info.Env(), "key must be 32 bytes");
  return KeyAt(buffer.Data());
}

// Packed 32-byte keys.
std::vector<kvstore::Key> RequireKeys(const Napi::CallbackInfo& info, size_t index) {
  REQUIRE_ARGUMENT_BUFFER(info, index, keys);
  auto keys = info[index].As<Napi::Buffer<uint8_t>>();
  if (keys.Length() % kvstore::kKeyBytes != 0)
    throw Napi::TypeError::New(info.Env(), "keys must be a multiple of 32 bytes");
  std::vector<kvstore::Key> parsed(keys.Length() / kvstore::kKeyBytes);
  for (size_t i = 0; i < parsed.size(); ++i) parsed[i] = KeyAt(keys.Data() + i * kvstore::kKeyBytes);
  return parsed;
}

uint64_t OptionNumber(const Napi::Object& options, const char* name, uint64_t fallback) {
  Napi::Value value = options.Get(name);
  if (value.IsUndefined()) return fallback;
  if (!value.IsNumber()) throw Napi::TypeError::New(options.Env(), std::string(name) + " must be a number");
  double number = value.As<Napi::Number>().DoubleValue();
  if (!(number >= 0) || number > 9007199254740991.0)
    throw Napi::RangeError::New(options.Env(), std::string(name) + " out of range");
  return static_cast<uint64_t>(number);
}

// Base for promise-returning work; the core store is shared so it outlives the
// JS wrapper while work is queued.
class PromiseWorker : public Napi::AsyncWorker {
 public:
  PromiseWorker(Napi::Env env, std::shared_ptr<kvstore::Store> store)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), store_(std::move(store)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void OnError(const Napi::Error& error) override { deferred_.Reject(error.Value()); }
  Napi::Promise::Deferred deferred_;
  std::shared_ptr<kvstore::Store> store_;
};

class NativeStore;

class OpenWorker : public PromiseWorker {
 public:
  OpenWorker(Napi::Env env, NativeStore* target, Napi::Object self, std::string dir, kvstore::Options options)
      : PromiseWorker(env, nullptr), target_(target), dir_(std::move(dir)), options_(options) {
    self_ = Napi::Persistent(self);
  }
  void Execute() override { store_ = kvstore::Store::Open(dir_, options_, &error_); }
  void OnOK() override;

 private:
  NativeStore* target_;
  Napi::ObjectReference self_;  // keeps the wrapper alive until open completes
  std::string dir_;
  kvstore::Options options_;
  kvstore::OpenError error_;
};

class WriteWorker : public PromiseWorker {
 public:
  WriteWorker(Napi::Env env, std::shared_ptr<kvstore::Store> store, Napi::Buffer<uint8_t> keys, Napi::Array payloads)
      : PromiseWorker(env, std::move(store)) {
    keysRef_ = Napi::Persistent(keys.As<Napi::Object>());
    // The payload Buffers stay referenced, not copied, until the write is done.
    payloadsRef_ = Napi::Persistent(payloads.As<Napi::Object>());
    uint32_t count = payloads.Length();
    ops_.resize(count);
    for (uint32_t i = 0; i < count; ++i) {
      Napi::Value payload = payloads.Get(i);
      ops_[i].key = KeyAt(keys.Data() + static_cast<size_t>(i) * kvstore::kKeyBytes);
      if (payload.IsNull()) {
        ops_[i].isDelete = true;
        continue;
      }
      if (!payload.IsBuffer()) throw Napi::TypeError::New(env, "payloads must be Buffers or null");
      auto bytes = payload.As<Napi::Buffer<uint8_t>>();
      if (bytes.Length() > kvstore::kPayloadBytesLimit) throw Napi::RangeError::New(env, "payload too large");
      ops_[i].payload = bytes.Data();
      ops_[i].payloadBytes = static_cast<uint32_t>(bytes.Length());
    }
  }
  void Execute() override { codes_ = store_->Write(ops_); }
  void OnOK() override {
    Napi::Env env = Env();
    auto codes = Napi::Int32Array::New(env, codes_.size());
    for (size_t i = 0; i < codes_.size(); ++i) codes[i] = static_cast<int32_t>(codes_[i]);
    deferred_.Resolve(codes);
  }

 private:
  Napi::ObjectReference keysRef_;
  Napi::ObjectReference payloadsRef_;
  std::vector<kvstore::WriteOp> ops_;
  std::vector<Code> codes_;
};

// Reads hand verified payloads to JavaScript; what never reached it is freed here.
class ReadWorker : public PromiseWorker {
 public:
  ReadWorker(Napi::Env env, std::shared_ptr<kvstore::Store> store, std::vector<kvstore::Key> keys)
      : PromiseWorker(env, std::move(store)), keys_(std::move(keys)) {}
  ~ReadWorker() override {
    for (auto& result : results_) std::free(result.base);  // only those never handed to JS
  }

 protected:
  // Zero copy: the Buffer views the verified payload inside the read buffer and frees
  // the whole allocation when collected.
  static Napi::Buffer<uint8_t> HandOver(Napi::Env env, kvstore::ReadResult& result) {
    uint8_t* base = result.base;
    result.base = nullptr;
    return Napi::Buffer<uint8_t>::New(env, base + kvstore::ReadResult::kPayloadOffset, result.payloadBytes,
                                      [base](Napi::Env, uint8_t*) { std::free(base); });
  }

  std::vector<kvstore::Key> keys_;
  std::vector<kvstore::ReadResult> results_;
};

class GetWorker : public ReadWorker {
 public:
  using ReadWorker::ReadWorker;
  void Execute() override { results_ = store_->GetMany(keys_); }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::Array out = Napi::Array::New(env, results_.size());
    for (size_t i = 0; i < results_.size(); ++i) {
      kvstore::ReadResult& result = results_[i];
      if (result.code != Code::kOk) {
        out.Set(static_cast<uint32_t>(i), Napi::Number::New(env, static_cast<int32_t>(result.code)));
        continue;
      }
      out.Set(static_cast<uint32_t>(i), HandOver(env, result));
    }
    deferred_.Resolve(out);
  }
};

// Resolves { spans, fallbacks }: for key i, spans[2i] and spans[2i + 1] are the payload's
// offset and length in the arena; or -1 and the error code; or -2 and the index in
// `fallbacks` of the Buffer a payload that did not fit the arena was read into.
class GetIntoWorker : public ReadWorker {
 public:
  GetIntoWorker(Napi::Env env, std::shared_ptr<kvstore::Store> store, std::vector<kvstore::Key> keys,
                Napi::Buffer<uint8_t> arena)
      : ReadWorker(env, std::move(store), std::move(keys)), arena_(arena.Data()), arenaBytes_(arena.Length()) {
    arenaRef_ = Napi::Persistent(arena.As<Napi::Object>());
  }
  void Execute() override { results_ = store_->GetManyInto(keys_, arena_, arenaBytes_); }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::Float64Array spans = Napi::Float64Array::New(env, 2 * results_.size());
    Napi::Array fallbacks = Napi::Array::New(env);
    for (size_t i = 0; i < results_.size(); ++i) {
      kvstore::ReadResult& result = results_[i];
      if (result.code != Code::kOk) {
        spans[2 * i] = -1;
        spans[2 * i + 1] = static_cast<int32_t>(result.code);
      } else if (result.arenaOffset == kvstore::ReadResult::kNotInArena) {
        spans[2 * i] = -2;
        spans[2 * i + 1] = fallbacks.Length();
        fallbacks.Set(fallbacks.Length(), HandOver(env, result));
      } else {
        spans[2 * i] = static_cast<double>(result.arenaOffset);
        spans[2 * i + 1] = result.payloadBytes;
      }
    }
    Napi::Object out = Napi::Object::New(env);
    out.Set("spans", spans);
    out.Set("fallbacks", fallbacks);
    deferred_.Resolve(out);
  }

 private:
  Napi::ObjectReference arenaRef_;  // keeps the arena alive while the reads fill it
  uint8_t* arena_;
  size_t arenaBytes_;
};

class CloseWorker : public PromiseWorker {
 public:
  using PromiseWorker::PromiseWorker;
  void Execute() override {
    if (store_) store_->Close();
  }
  void OnOK() override { deferred_.Resolve(Env().Undefined()); }
};

class NativeStore : public Napi::ObjectWrap<NativeStore> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeStore",
                       {
                           InstanceMethod<&NativeStore::Open>("open"),
                           InstanceMethod<&NativeStore::Write>("write"),
                           InstanceMethod<&NativeStore::GetMany>("getMany"),
                           InstanceMethod<&NativeStore::GetManyInto>("getManyInto"),
                           InstanceMethod<&NativeStore::Has>("has"),
                           InstanceMethod<&NativeStore::Pin>("pin"),
                           InstanceMethod<&NativeStore::Unpin>("unpin"),
                           InstanceMethod<&NativeStore::Keys>("keys"),
                           InstanceMethod<&NativeStore::Stats>("stats"),
                           InstanceMethod<&NativeStore::Close>("close"),
                           InstanceMethod<&NativeStore::SetNowMs>("setNowMs"),
                           InstanceMethod<&NativeStore::InjectFaults>("injectFaults"),
                       });
  }

  explicit NativeStore(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeStore>(info) {}

  // Dropping the last reference closes the core store (and releases its lock),
  // also when a worker thread exits without calling close().
  ~NativeStore() override = default;

  void Adopt(std::shared_ptr<kvstore::Store> store) { store_ = std::move(store); }

 private:
  std::shared_ptr<kvstore::Store> Require(Napi::Env env) {
    if (!store_) throw CodedError(env, Code::kClosed, "store is not open");
    return store_;
  }

  Napi::Value Open(const Napi::CallbackInfo& info) {
    REQUIRE_ARGUMENT_COUNT(info, 2);
    REQUIRE_ARGUMENT_STRING(info, 0, dir);
    REQUIRE_ARGUMENT_OBJECT(info, 1, options);
    if (store_ || opening_) throw Napi::Error::New(info.Env(), "open() called twice");
    auto options = info[1].As<Napi::Object>();
    kvstore::Options parsed;
    parsed.bytesMax = OptionNumber(options, "bytesMax", 0);
    parsed.segmentBytes = OptionNumber(options, "segmentBytes", parsed.segmentBytes);
    parsed.checkpointEveryBytes = OptionNumber(options, "checkpointEveryBytes", parsed.checkpointEveryBytes);
    parsed.readThreads = static_cast<uint32_t>(OptionNumber(options, "readThreads", parsed.readThreads));
    parsed.pinnedBytesMax = OptionNumber(options, "pinnedBytesMax", 0);
    Napi::Value fsync = options.Get("fsync");
    if (!fsync.IsString()) throw Napi::TypeError::New(info.Env(), "fsync must be 'batch' or 'none'");
    std::string policy = fsync.As<Napi::String>().Utf8Value();
    if (policy == "batch") {
      parsed.fsync = kvstore::FsyncPolicy::kBatch;
    } else if (policy == "none") {
      parsed.fsync = kvstore::FsyncPolicy::kNone;
    } else {
      throw Napi::TypeError::New(info.Env(), "fsync must be 'batch' or 'none'");
    }
    if (parsed.segmentBytes < 64 * 1024 || parsed.segmentBytes > (1ull << 32))
      throw Napi::RangeError::New(info.Env(), "segmentBytes out of range");
    if (parsed.bytesMax < kvstore::MinBytesMax(parsed.segmentBytes))
      throw Napi::RangeError::New(info.Env(), "bytesMax below 4 x segmentBytes");
    if (parsed.readThreads < 1 || parsed.readThreads > 64)
      throw Napi::RangeError::New(info.Env(), "readThreads out of range");
    // A clock set from JavaScript (StoreOptions.nowMs): the core reads the last value given.
    if (!options.Get("clockMs").IsUndefined()) {
      auto clock = std::make_shared<std::atomic<uint64_t>>(OptionNumber(options, "clockMs", 0));
      clock_ = clock;
      parsed.clock = [clock] { return clock->load(std::memory_order_relaxed); };
    }
    Napi::Value faults = options.Get("faults");
    if (!faults.IsUndefined()) {
      if (!faults.IsString()) throw Napi::TypeError::New(info.Env(), "faults must be a string");
      parsed.faults = ParseFaults(info.Env(), faults.As<Napi::String>().Utf8Value());
    }
    opening_ = true;
    auto* worker = new OpenWorker(info.Env(), this, info.This().As<Napi::Object>(),
                                  info[0].As<Napi::String>().Utf8Value(), parsed);
    worker->Queue();
    return worker->Promise();
  }

  Napi::Value Write(const Napi::CallbackInfo& info) {
    REQUIRE_ARGUMENT_COUNT(info, 2);
    REQUIRE_ARGUMENT_BUFFER(info, 0, keys);
    if (!info[1].IsArray()) throw Napi::TypeError::New(info.Env(), "argument payloads must be an array");
    auto keys = info[0].As<Napi::Buffer<uint8_t>>();
    auto payloads = info[1].As<Napi::Array>();
    if (keys.Length() != static_cast<size_t>(payloads.Length()) * kvstore::kKeyBytes)
      throw Napi::TypeError::New(info.Env(), "keys must hold 32 bytes per payload");
    auto* worker = new WriteWorker(info.Env(), Require(info.Env()), keys, payloads);
    worker->Queue();
    return worker->Promise();
  }

  Napi::Value GetMany(const Napi::CallbackInfo& info) {
    REQUIRE_ARGUMENT_COUNT(info, 1);
    auto* worker = new GetWorker(info.Env(), Require(info.Env()), RequireKeys(info, 0));
    worker->Queue();
    return worker->Promise();
  }

  Napi::Value GetManyInto(const Napi::CallbackInfo& info) {
    REQUIRE_ARGUMENT_COUNT(info, 2);
    REQUIRE_ARGUMENT_BUFFER(info, 1, arena);
    auto* worker = new GetIntoWorker(info.Env(), Require(info.Env()), RequireKeys(info, 0),
                                     info[1].As<Napi::Buffer<uint8_t>>());
    worker->Queue();
    return worker->Promise();
  }

  Napi::Value Has(const Napi::CallbackInfo& info) {
    REQUIRE_ARGUMENT_COUNT(info, 1);
    kvstore::Key key = RequireKey(info, 0);
    return Napi::Boolean::New(info.Env(), Require(info.Env())->Has(key));
  }

  Napi::Value Pin(const Napi::CallbackInfo& info) {
    REQUIRE_ARGUMENT_COUNT(info, 3);
    kvstore::Key key = RequireKey(info, 0);
    if (!info[1].IsBoolean()) throw Napi::TypeError::New(info.Env(), "argument hard must be a boolean");
    REQUIRE_ARGUMENT_NUMBER(info, 2, ttlMs);
    double ttlMs = info[2].As<Napi::Number>().DoubleValue();
    if (!(ttlMs >= 0) || ttlMs > 9007199254740991.0) throw Napi::RangeError::New(info.Env(), "ttlMs out of range");
    Code code = Require(info.Env())->Pin(key, info[1].As<Napi::Boolean>().Value(), static_cast<uint64_t>(ttlMs));
    return Napi::Number::New(info.Env(), static_cast<int32_t>(code));
  }

  Napi::Value Unpin(const Napi::CallbackInfo& info) {
    REQUIRE_ARGUMENT_COUNT(info, 1);
    kvstore::Key key = RequireKey(info, 0);
    return Napi::Boolean::New(info.Env(), Require(info.Env())->Unpin(key));
  }

  Napi::Value Keys(const Napi::CallbackInfo& info) {
    std::vector<kvstore::Key> keys = Require(info.Env())->Keys();
    auto out = Napi::Buffer<uint8_t>::New(info.Env(), keys.size() * kvstore::kKeyBytes);
    for (size_t i = 0; i < keys.size(); ++i)
      std::memcpy(out.Data() + i * kvstore::kKeyBytes, keys[i].bytes.data(), kvstore::kKeyBytes);
    return out;
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    kvstore::Stats stats = Require(info.Env())->GetStats();
    Napi::Env env = info.Env();
    Napi::Object out = Napi::Object::New(env);
    auto set = [&](const char* name, uint64_t value) {
      out.Set(name, Napi::Number::New(env, static_cast<double>(value)));
    };
    set("bytes", stats.bytes);
    set("bytesMax", stats.bytesMax);
    set("liveBytes", stats.liveBytes);
    set("blocks", stats.blocks);
    set("segments", stats.segments);
    set("hits", stats.hits);
    set("misses", stats.misses);
    set("evictions", stats.evictions);
    set("corruptions", stats.corruptions);
    set("writeErrors", stats.writeErrors);
    set("writeErrorsEnospc", stats.writeErrorsEnospc);
    set("writeErrorsEio", stats.writeErrorsEio);
    set("writeErrorsOther", stats.writeErrorsOther);
    set("readErrors", stats.readErrors);
    set("capacityRejects", stats.capacityRejects);
    set("pinnedBlocks", stats.pinnedBlocks);
    set("pinnedBytes", stats.pinnedBytes);
    set("compactions", stats.compactions);
    set("relocatedBytes", stats.relocatedBytes);
    set("checkpoints", stats.checkpoints);
    set("replayedRecords", stats.replayedRecords);
    set("badRecords", stats.badRecords);
    set("skippedBytes", stats.skippedBytes);
    set("truncatedBytes", stats.truncatedBytes);
    set("indexRebuilds", stats.indexRebuilds);
    set("quarantinedSegments", stats.quarantinedSegments);
    auto strings = [&](const char* name, const std::vector<std::string>& values) {
      Napi::Array array = Napi::Array::New(env, values.size());
      for (size_t i = 0; i < values.size(); ++i) array.Set(static_cast<uint32_t>(i), Napi::String::New(env, values[i]));
      out.Set(name, array);
    };
    strings("quarantinedFiles", stats.quarantinedFiles);
    strings("openWarnings", stats.openWarnings);
    set("queueDepth", stats.queueDepth);
    set("blocksWritten", stats.blocksWritten);
    set("openMs", stats.openMs);
    return out;
  }

  Napi::Value SetNowMs(const Napi::CallbackInfo& info) {
    REQUIRE_ARGUMENT_COUNT(info, 1);
    REQUIRE_ARGUMENT_NUMBER(info, 0, ms);
    double ms = info[0].As<Napi::Number>().DoubleValue();
    if (!(ms >= 0) || ms > 9007199254740991.0) throw Napi::RangeError::New(info.Env(), "ms out of range");
    if (!clock_) throw Napi::Error::New(info.Env(), "store was opened without a clock (clockMs)");
    clock_->store(static_cast<uint64_t>(ms), std::memory_order_relaxed);
    return info.Env().Undefined();
  }

  // Test-only: see kvstore::FaultInjector; "" removes every rule.
  Napi::Value InjectFaults(const Napi::CallbackInfo& info) {
    REQUIRE_ARGUMENT_COUNT(info, 1);
    REQUIRE_ARGUMENT_STRING(info, 0, spec);
    auto faults = ParseFaults(info.Env(), info[0].As<Napi::String>().Utf8Value());
    Require(info.Env())->SetFaults(faults->empty() ? nullptr : faults);
    return info.Env().Undefined();
  }

  static std::shared_ptr<kvstore::FaultInjector> ParseFaults(Napi::Env env, const std::string& spec) {
    std::string error;
    auto faults = kvstore::FaultInjector::Parse(spec, &error);
    if (!faults) throw Napi::TypeError::New(env, "bad fault spec: " + error);
    return faults;
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    auto* worker = new CloseWorker(info.Env(), store_);
    worker->Queue();
    return worker->Promise();
  }

  friend class OpenWorker;
  std::shared_ptr<kvstore::Store> store_;
  std::shared_ptr<std::atomic<uint64_t>> clock_;
  bool opening_ = false;
};

void OpenWorker::OnOK() {
  Napi::Env env = Env();
  target_->opening_ = false;
  if (!store_) {
    deferred_.Reject(CodedError(env, error_.code, error_.message).Value());
    return;
  }
  target_->Adopt(store_);
  store_.reset();
  deferred_.Resolve(env.Undefined());
}

// XXH3-64 with seed 0, as native/FORMAT.md uses it: lets tests and tools build
// valid headers without a JavaScript xxHash.
Napi::Value Checksum(const Napi::CallbackInfo& info) {
  REQUIRE_ARGUMENT_COUNT(info, 1);
  REQUIRE_ARGUMENT_BUFFER(info, 0, bytes);
  auto bytes = info[0].As<Napi::Buffer<uint8_t>>();
  return Napi::BigInt::New(info.Env(), static_cast<uint64_t>(XXH3_64bits(bytes.Data(), bytes.Length())));
}

// The process's allocator: its name and counters (see allocator.h).
Napi::Value AllocatorStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  kvalloc::Stats stats = kvalloc::Read();
  Napi::Object result = Napi::Object::New(env);
  result.Set("name", stats.name);
  result.Set("version", stats.version);
  result.Set("allocatedBytes", Napi::Number::New(env, static_cast<double>(stats.allocated)));
  result.Set("activeBytes", Napi::Number::New(env, static_cast<double>(stats.active)));
  result.Set("residentBytes", Napi::Number::New(env, static_cast<double>(stats.resident)));
  return result;
}

Napi::Value AllocatorPurge(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), kvalloc::Purge());
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("NativeStore", NativeStore::Define(env));
  exports.Set("checksum", Napi::Function::New(env, Checksum, "checksum"));
  exports.Set("allocatorStats", Napi::Function::New(env, AllocatorStats, "allocatorStats"));
  exports.Set("allocatorPurge", Napi::Function::New(env, AllocatorPurge, "allocatorPurge"));
  exports.Set("formatVersion", Napi::Number::New(env, kvstore::kFormatVersion));
  return exports;
}

}  // namespace

NODE_API_MODULE(kvpark_store, Init)
