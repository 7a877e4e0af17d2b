// The CUDA device on a real GPU: properties, memory, and the hash kernel against the host
// definition.
#include <catch2/catch.hpp>

#if defined(DISTRO_HAVE_CUDA)

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "backend/registry.hpp"
#include "cuda/op_timer.hpp"
#include "optim/hash_mix.hpp"

using namespace distro;

namespace {

// The definition, sequentially on the host: sum of hash_term over the elements, modulo 2^64.
uint64_t host_hash(const float* data, uint64_t n, uint64_t salt) {
  uint64_t sum = 0;
  for (uint64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, data + i, sizeof(bits));
    sum += hash_term(bits, i, salt);
  }
  return sum;
}

std::vector<float> random_floats(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// Arbitrary bit patterns: NaNs, infinities, subnormals and -0 included.
std::vector<float> random_bits(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<float> v(n);
  for (auto& x : v) {
    const uint32_t b = rng();
    std::memcpy(&x, &b, sizeof(b));
  }
  return v;
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("cuda: devices are listed with sane properties", "[cuda]") {
  auto devices = scan_cuda_devices();
  REQUIRE(!devices.empty());
  for (size_t d = 0; d < devices.size(); ++d) {
    const DeviceInfo& info = devices[d]->info();
    INFO(info.name << ": " << info.description);
    CHECK(info.name.rfind("cuda:", 0) == 0);
    CHECK(info.kind == DeviceKind::cuda);
    CHECK(contains(info.description, "(compute "));
    CHECK(contains(info.description, " SMs)"));
    CHECK(info.memory_total > (uint64_t(256) << 20));
    CHECK(info.memory_free > 0);
    CHECK(info.memory_free <= info.memory_total);
    CHECK(info.compute_units > 0);
    CHECK(info.subgroup_size == 32);
    CHECK((info.flags & kDeviceInt64) != 0);
    CHECK((info.flags & kDeviceFp16) != 0);       // every GPU this build runs on (sm_75+) has fp16
    CHECK((info.flags & kDeviceOptimizer) != 0);  // compress, apply and the gradient check run on CUDA
    // Names are unique.
    for (size_t e = 0; e < d; ++e) CHECK(devices[e]->info().name != info.name);
  }
}

TEST_CASE("cuda: upload, zero and download round trip", "[cuda]") {
  auto devices = scan_cuda_devices();
  REQUIRE(!devices.empty());
  Device& dev = *devices[0];
  for (size_t bytes : {size_t(1), size_t(7), size_t(4096), size_t(3) << 20}) {
    INFO("bytes = " << bytes);
    std::vector<uint8_t> src(bytes), back(bytes, 0xAB);
    std::mt19937 rng{static_cast<uint32_t>(bytes)};
    for (auto& b : src) b = uint8_t(rng());
    DeviceMemory mem = dev.alloc(bytes);
    REQUIRE(mem.data() != nullptr);
    CHECK(mem.bytes() == bytes);
    dev.upload(mem.data(), src.data(), bytes);
    dev.download(back.data(), mem.data(), bytes);
    CHECK(back == src);
    dev.zero(mem.data(), bytes);
    dev.synchronize();
    dev.download(back.data(), mem.data(), bytes);
    CHECK(back == std::vector<uint8_t>(bytes, 0));
  }
  // Zero bytes is a no-op, also with null pointers.
  dev.upload(nullptr, nullptr, 0);
  dev.download(nullptr, nullptr, 0);
  dev.zero(nullptr, 0);
  // A moved DeviceMemory frees once.
  DeviceMemory a = dev.alloc(1024);
  DeviceMemory b = std::move(a);
  CHECK(a.data() == nullptr);
  CHECK(b.data() != nullptr);
}

TEST_CASE("cuda: an impossible allocation is Error(out_of_memory), and the device still works",
          "[cuda]") {
  auto devices = scan_cuda_devices();
  REQUIRE(!devices.empty());
  Device& dev = *devices[0];
  for (size_t bytes : {size_t(1) << 60, std::numeric_limits<size_t>::max() / 2,
                       size_t(dev.info().memory_total) * 2}) {
    INFO("bytes = " << bytes);
    try {
      (void)dev.alloc(bytes);
      FAIL("alloc of " << bytes << " bytes succeeded");
    } catch (const Error& e) {
      CHECK(e.code() == Code::out_of_memory);
      CHECK(contains(e.what(), "cudaMalloc"));
      CHECK(contains(e.what(), dev.info().name));
    }
  }
  // The failed allocation left no error behind.
  DeviceMemory mem = dev.alloc(4096);
  std::vector<float> v = random_floats(1024, 5), back(1024);
  dev.upload(mem.data(), v.data(), 4096);
  dev.download(back.data(), mem.data(), 4096);
  CHECK(back == v);
}

TEST_CASE("cuda: hash equals the host definition", "[cuda][hash]") {
  auto devices = scan_cuda_devices();
  REQUIRE(!devices.empty());
  for (auto& d : devices) {
    Device& dev = *d;
    INFO(dev.info().name);
    for (uint64_t n : {uint64_t(1), uint64_t(2), uint64_t(3), uint64_t(5), uint64_t(1000),
                       uint64_t(4097), uint64_t(10'000'003)}) {
      for (int kind = 0; kind < 2; ++kind) {
        INFO("n = " << n << (kind ? ", random bit patterns" : ", normal floats"));
        // Four spare elements so that every start offset 0..3 (16-byte misalignment) has n
        // elements.
        std::vector<float> host =
            kind ? random_bits(n + 4, uint32_t(n) + 1) : random_floats(n + 4, uint32_t(n));
        DeviceMemory mem = dev.alloc((n + 4) * sizeof(float));
        dev.upload(mem.data(), host.data(), (n + 4) * sizeof(float));
        for (uint64_t salt : {uint64_t(0), tensor_salt(7), ~uint64_t(0)}) {
          for (uint64_t offset = 0; offset < 4; ++offset) {
            INFO("salt = " << salt << ", offset = " << offset);
            const uint64_t want = host_hash(host.data() + offset, n, salt);
            CHECK(dev.hash(mem.as<float>() + offset, n, salt) == want);
            if (n > 100'000) break;  // the large size once per salt: the host side is the slow part
          }
        }
      }
    }
  }
}

TEST_CASE("cuda: hash is stable, sees every element, and rejects bad pointers", "[cuda][hash]") {
  auto devices = scan_cuda_devices();
  REQUIRE(!devices.empty());
  Device& dev = *devices[0];
  const uint64_t n = 1 << 20;
  std::vector<float> host = random_floats(n, 42);
  DeviceMemory mem = dev.alloc(n * sizeof(float));
  dev.upload(mem.data(), host.data(), n * sizeof(float));
  const uint64_t h = dev.hash(mem.as<float>(), n, 3);
  CHECK(dev.hash(mem.as<float>(), n, 3) == h);  // same answer every time
  CHECK(dev.hash(mem.as<float>(), 0, 3) == 0);  // empty sum
  CHECK(dev.hash(mem.as<float>(), n, 4) != h);  // salt matters

  // Flipping one bit anywhere (first, middle, last element) changes the hash.
  for (uint64_t i : {uint64_t(0), n / 2 + 1, n - 1}) {
    std::vector<float> changed = host;
    uint32_t bits;
    std::memcpy(&bits, &changed[i], 4);
    bits ^= 1u;
    std::memcpy(&changed[i], &bits, 4);
    dev.upload(mem.data(), changed.data(), n * sizeof(float));
    CHECK(dev.hash(mem.as<float>(), n, 3) != h);
  }

  // A host pointer is refused before any kernel sees it, and the device keeps working.
  try {
    (void)dev.hash(host.data(), n, 3);
    FAIL("hash of a host pointer succeeded");
  } catch (const Error& e) {
    CHECK(e.code() == Code::invalid_argument);
  }
  try {
    (void)dev.hash(nullptr, 4, 3);
    FAIL("hash of a null pointer succeeded");
  } catch (const Error& e) {
    CHECK(e.code() == Code::invalid_argument);
  }
  dev.upload(mem.data(), host.data(), n * sizeof(float));
  CHECK(dev.hash(mem.as<float>(), n, 3) == h);
}

TEST_CASE("cuda: the op timer counts each scope's GPU time under its name", "[cuda][timer]") {
  REQUIRE(cudaSetDevice(0) == cudaSuccess);
  cudaStream_t stream = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
  void* buf = nullptr;
  const size_t bytes = size_t(256) << 20;
  REQUIRE(cudaMalloc(&buf, bytes) == cudaSuccess);
  {
    cuda::OpTimer off(stream);  // DISTRO_CUDA_OP_TIMES is not set in the tests
    if (!off.enabled()) {
      { cuda::OpTimer::Scope s(off, "memset"); }
      CHECK(off.rows().empty());
    }
    cuda::OpTimer t(stream, true);
    for (int i = 0; i < 3; ++i) {
      cuda::OpTimer::Scope s(t, "memset");
      REQUIRE(cudaMemsetAsync(buf, i, bytes, stream) == cudaSuccess);
    }
    {
      cuda::OpTimer::Scope s(t, std::string("nothing"));
    }
    const auto rows = t.rows();
    REQUIRE(rows.size() == 2);
    CHECK(rows[0].op == "memset");  // most time first
    CHECK(rows[0].calls == 3);
    CHECK(rows[0].ms > 0.0);  // 768 MiB written: tens of microseconds at least
    CHECK(rows[1].op == "nothing");
    CHECK(rows[1].calls == 1);
    CHECK(rows[1].ms <= rows[0].ms);
  }
  cudaFree(buf);
  cudaStreamDestroy(stream);
}

TEST_CASE("cuda: hash_many and sum_squares_many over more tensors than one launch holds", "[cuda][hash]") {
  // 150 buffers (three launches of at most 64), empty to 262,000 elements, at every 16-byte
  // misalignment: each hash lands in its own word and equals the sequential definition; each sum of
  // squares equals the host's within float64 rounding and, bit for bit, the buffer's sum on its own
  // (a buffer's units do not depend on the others in its launch).
  auto devices = scan_cuda_devices();
  REQUIRE(!devices.empty());
  Device& dev = *devices[0];
  std::mt19937_64 rng(std::random_device{}());
  const uint64_t seed = rng();
  INFO("seed " << seed);
  rng.seed(seed);
  std::vector<uint64_t> sizes;
  for (int i = 0; i < 150; ++i) {
    const uint64_t kind = rng() % 10;
    sizes.push_back(kind == 0 ? 0 : kind < 4 ? rng() % 9 : kind < 8 ? rng() % 20000 : 8192 * 4 * (1 + rng() % 8) + rng() % 5);
  }
  uint64_t total = 0;
  for (uint64_t n : sizes) total += n + 3;
  std::vector<float> host = random_bits(total, uint32_t(seed));
  DeviceMemory mem = dev.alloc(total * 4);
  dev.upload(mem.data(), host.data(), total * 4);
  std::vector<const float*> data;
  std::vector<uint64_t> salt, want;
  uint64_t at = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    at += rng() % 4;
    data.push_back(mem.as<float>() + at);
    salt.push_back(tensor_salt(i));
    want.push_back(host_hash(host.data() + at, sizes[i], salt[i]));
    at += sizes[i];
  }
  REQUIRE(at <= total);
  std::vector<uint64_t> got(sizes.size(), 1);
  dev.hash_many(data.data(), sizes.data(), salt.data(), sizes.size(), got.data());
  std::vector<double> sums(sizes.size(), -1.0), again(sizes.size(), -2.0);
  dev.sum_squares_many(data.data(), sizes.data(), sizes.size(), sums.data());
  dev.sum_squares_many(data.data(), sizes.data(), sizes.size(), again.data());
  for (size_t i = 0; i < sizes.size(); ++i) {
    INFO("buffer " << i << " of " << sizes[i] << " elements");
    CHECK(got[i] == want[i]);
    const float* h = host.data() + (data[i] - mem.as<float>());
    double ref = 0.0;
    for (uint64_t j = 0; j < sizes[i]; ++j)
      if (std::isfinite(h[j])) ref += double(h[j]) * double(h[j]);
    bool finite = true;
    for (uint64_t j = 0; j < sizes[i]; ++j) finite = finite && std::isfinite(h[j]);
    if (finite) CHECK(std::abs(sums[i] - ref) <= 1e-12 * ref);
    CHECK(std::memcmp(&sums[i], &again[i], sizeof(double)) == 0);  // the same bits every time
    const double alone = dev.sum_squares(data[i], sizes[i]);
    CHECK(std::memcmp(&sums[i], &alone, sizeof(double)) == 0);
  }
}

TEST_CASE("cuda: the batched reductions equal the single ops, buffer by buffer", "[cuda][hash]") {
  auto devices = scan_cuda_devices();
  REQUIRE(!devices.empty());
  Device& dev = *devices[0];
  // Sizes: empty, tiny, unaligned lengths and starts, a large one.
  const std::vector<uint64_t> sizes = {0, 1, 3, 4097, 777, 1'000'003, 64};
  uint64_t total = 0;
  for (uint64_t n : sizes) total += n + 1;
  std::vector<float> host = random_floats(total, 99), grad = random_floats(total, 100);
  DeviceMemory a = dev.alloc(total * 4), g = dev.alloc(total * 4);
  std::vector<const float*> data, grads;
  std::vector<uint64_t> n, salt;
  uint64_t at = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    at += i % 2;  // every other buffer starts 4 bytes later: not 16-byte aligned
    data.push_back(a.as<float>() + at), grads.push_back(g.as<float>() + at);
    n.push_back(sizes[i]), salt.push_back(tensor_salt(i));
    at += sizes[i];
  }
  // A NaN gradient in buffer 3 (element 100) and an overflow in buffer 5 (element 5).
  const uint64_t nan_at = uint64_t(grads[3] - g.as<float>()) + 100, big_at = uint64_t(grads[5] - g.as<float>()) + 5;
  grad[nan_at] = std::numeric_limits<float>::quiet_NaN();
  grad[big_at] = 3e38f;
  dev.upload(a.data(), host.data(), total * 4);
  dev.upload(g.data(), grad.data(), total * 4);

  std::vector<uint64_t> hashes(sizes.size(), 1), first(sizes.size(), 1);
  std::vector<double> sums(sizes.size(), -1.0);
  dev.hash_many(data.data(), n.data(), salt.data(), sizes.size(), hashes.data());
  dev.sum_squares_many(data.data(), n.data(), sizes.size(), sums.data());
  dev.first_nonfinite_momentum_many(data.data(), grads.data(), n.data(), 0.9f, 10.0f, sizes.size(), first.data());
  for (size_t i = 0; i < sizes.size(); ++i) {
    INFO("buffer " << i << " of " << n[i] << " elements");
    CHECK(hashes[i] == dev.hash(data[i], n[i], salt[i]));
    CHECK(sums[i] == dev.sum_squares(data[i], n[i]));  // the same grid: the same bits
    CHECK(first[i] == dev.first_nonfinite_momentum(data[i], grads[i], 0.9f, 10.0f, n[i]));
  }
  CHECK(first[3] == 100);
  CHECK(first[5] == 5);
  CHECK(first[0] == UINT64_MAX);
  CHECK(hashes[0] == 0);
  CHECK(sums[0] == 0.0);
}

#endif  // DISTRO_HAVE_CUDA
