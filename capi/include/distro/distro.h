/*
 * libdistro: the DisTrO optimizer as an embeddable library.
 *
 * This header is the contract. Everything exported is named distro_*; anything not declared here is
 * not part of the API. It compiles as C99 and as C++.
 *
 * Conventions (docs/c-api.md has the long form):
 * - Functions return an int status from enum distro_status; DISTRO_OK (0) is success. Output
 *   parameters come first and are named out*. On failure, outputs are left untouched unless a
 *   function says otherwise, and distro_last_error() describes what was wrong and what was expected.
 * - Opaque handles are made by *_create (or *_scan) and freed by *_destroy. Destroy accepts NULL
 *   (DISTRO_OK); a handle that is not live (destroyed twice, or never made by libdistro) is answered
 *   with DISTRO_ERR_INVALID_ARGUMENT by destroy and by every other call, never with a crash.
 * - Memory the library returns (payload bytes) is freed with distro_free(). Caller-owned buffers
 *   registered with the library must stay valid for as long as the docs of that call say.
 * - Threads: every function may be called from any thread. A handle is not internally locked: use
 *   one handle from one thread at a time. Different handles may be used on different threads at
 *   once. distro_last_error() is per thread.
 * - The library never aborts or exits the host process, whatever it is given; it catches its own
 *   failures (including out of memory) and reports them as status codes.
 * - Options structs begin with struct_size, have an _INIT macro, and only grow at the end.
 */
#ifndef DISTRO_DISTRO_H
#define DISTRO_DISTRO_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(DISTRO_BUILDING_LIBRARY) && defined(__GNUC__)
#define DISTRO_API __attribute__((visibility("default")))
#else
#define DISTRO_API
#endif

/* ---------------------------------------------------------------------------------------------
 * Versions
 * ------------------------------------------------------------------------------------------- */

#define DISTRO_VERSION_MAJOR 0
#define DISTRO_VERSION_MINOR 1
#define DISTRO_VERSION_PATCH 0
#define DISTRO_VERSION_STRING "0.1.0"
/* MAJOR * 1000000 + MINOR * 1000 + PATCH, as SQLite does. */
#define DISTRO_VERSION_NUMBER \
  (DISTRO_VERSION_MAJOR * 1000000 + DISTRO_VERSION_MINOR * 1000 + DISTRO_VERSION_PATCH)
/* The shared library's SOVERSION; it changes only when the ABI breaks. */
#define DISTRO_ABI_VERSION 1
/* The wire format version this header describes (docs/protocol.md). */
#define DISTRO_WIRE_VERSION 1

/* The library's version string, e.g. "0.1.0". Static storage; never NULL. */
DISTRO_API const char *distro_version(void);
/* The library's DISTRO_VERSION_NUMBER. A binding compares it with the header it was built from. */
DISTRO_API int distro_version_number(void);
/* The library's DISTRO_ABI_VERSION. */
DISTRO_API int distro_abi_version(void);

/* ---------------------------------------------------------------------------------------------
 * Status codes and errors
 * ------------------------------------------------------------------------------------------- */

/* Pinned: values never change and are never reused. */
typedef enum distro_status {
  DISTRO_OK = 0,
  DISTRO_ERR_INVALID_ARGUMENT = 1, /* NULL where a value is needed, a value out of range */
  DISTRO_ERR_SIZE = 2,             /* a size or shape does not match what is expected */
  DISTRO_ERR_STATE = 3,            /* a call in the wrong order (e.g. adding a tensor after a step) */
  DISTRO_ERR_NOT_FOUND = 4,        /* no such device, tensor or file */
  DISTRO_ERR_UNSUPPORTED = 5,      /* the device or build lacks this operation */
  DISTRO_ERR_OUT_OF_MEMORY = 6,
  DISTRO_ERR_CORRUPT = 7,          /* malformed bytes: payload, update, file */
  DISTRO_ERR_MISMATCH = 8,         /* well-formed but for another run, step, manifest or version */
  DISTRO_ERR_DEVICE = 9,           /* the device driver reported a failure */
  DISTRO_ERR_IO = 10,              /* a file or socket operation failed */
  DISTRO_ERR_NUMERIC = 11,         /* non-finite values (NaN or infinity) in the input */
  DISTRO_ERR_INTERNAL = 12         /* a bug in libdistro; please report it */
} distro_status;

/* A short constant name for a status ("DISTRO_ERR_CORRUPT"); "unknown status" for other values. */
DISTRO_API const char *distro_status_name(int status);

/* The message of the last failed call on this thread: what was wrong and what was expected. An empty
 * string if the last call succeeded. Owned by the library; valid until the next libdistro call on the
 * same thread. Never NULL. */
DISTRO_API const char *distro_last_error(void);

/* Frees memory that the library returned (payloads, updates). Accepts NULL. */
DISTRO_API void distro_free(void *ptr);

/* ---------------------------------------------------------------------------------------------
 * Devices
 * ------------------------------------------------------------------------------------------- */

typedef enum distro_device_kind {
  DISTRO_DEVICE_CPU = 0,
  DISTRO_DEVICE_CUDA = 1,
  DISTRO_DEVICE_VULKAN = 2
} distro_device_kind;

/* Capability bits in distro_device_info.flags. */
#define DISTRO_DEVICE_FP16 (1u << 0)
#define DISTRO_DEVICE_BF16 (1u << 1)
#define DISTRO_DEVICE_INT64 (1u << 2)
/* The device runs the DisTrO optimizer ops (compress, apply). Devices found without it are listed so
 * the user sees them, but asking them for optimizer work answers DISTRO_ERR_UNSUPPORTED. */
#define DISTRO_DEVICE_OPTIMIZER (1u << 3)

typedef struct distro_device_info {
  size_t struct_size;        /* set by the caller: sizeof(distro_device_info) */
  char name[64];             /* the name to ask for it by: "cpu", "cuda:0", "vulkan:1" */
  char description[192];     /* e.g. "NVIDIA H100 80GB HBM3 (compute 9.0)" */
  int kind;                  /* distro_device_kind */
  uint32_t flags;            /* DISTRO_DEVICE_* bits */
  uint64_t memory_total;     /* bytes; for the CPU, the machine's RAM */
  uint64_t memory_free;      /* bytes available now, 0 if unknown */
  uint32_t compute_units;    /* CPU threads, CUDA SMs, Vulkan compute units (0 if unknown) */
  uint32_t subgroup_size;    /* warp or subgroup width; 1 for the CPU */
} distro_device_info;

#define DISTRO_DEVICE_INFO_INIT {sizeof(distro_device_info), {0}, {0}, 0, 0, 0, 0, 0, 0}

typedef struct distro_devices distro_devices;

/* Lists the devices present now: the CPU always, then CUDA and Vulkan devices whose driver loads. A
 * missing or broken driver means no such devices, never a failure.
 * Errors: INVALID_ARGUMENT if out is NULL; OUT_OF_MEMORY. The caller owns *out. */
DISTRO_API int distro_devices_scan(distro_devices **out);
DISTRO_API int distro_devices_destroy(distro_devices *devices);
/* Number of devices in the list (at least 1: the CPU). Errors: INVALID_ARGUMENT for NULL. */
DISTRO_API int distro_devices_count(size_t *out_count, const distro_devices *devices);
/* Fills *out for device index (0 .. count-1). out->struct_size must be set (DISTRO_DEVICE_INFO_INIT)
 * and be at least the size of this struct in version 0.1; later versions fill only what the
 * caller's struct holds.
 * Errors: INVALID_ARGUMENT (NULL), SIZE (struct_size too small), NOT_FOUND (index out of range). */
DISTRO_API int distro_devices_get(distro_device_info *out, const distro_devices *devices,
                                  size_t index);

/* ---------------------------------------------------------------------------------------------
 * The DisTrO optimizer
 *
 * One optimizer handle is one peer's optimizer state for one model. Use it like this:
 *   1. distro_optimizer_create with options (chunk edge, top-k, decay, value mode, device);
 *   2. distro_optimizer_add_tensor for every trainable tensor, in the same order on every peer:
 *      its name, shape, and two caller-owned float32 host buffers, the parameters and the gradient;
 *   3. per step: fill the gradients, distro_optimizer_compress -> this peer's payload bytes;
 *      send them; someone (any peer, or the coordinator) merges all peers' payloads with a
 *      distro_merger; every peer calls distro_optimizer_apply with the merged update.
 * The first compress or apply freezes the tensor list (the manifest); every peer of a run must
 * register the same tensors with the same options, which the manifest hash checks.
 * ------------------------------------------------------------------------------------------- */

typedef enum distro_value_mode {
  DISTRO_VALUES_SIGN = 1, /* 1 bit per sent coefficient: its sign */
  DISTRO_VALUES_INT8 = 2  /* 8 bits: the coefficient normalised by the largest sent in its chunk */
} distro_value_mode;

typedef struct distro_optimizer_options {
  size_t struct_size;  /* sizeof(distro_optimizer_options) */
  uint64_t run_id;     /* identifies the run; payloads of other runs are refused */
  uint32_t peer_id;    /* this peer's id, unique within the run */
  uint32_t chunk;      /* target chunk edge s, 1..256 (default 64; the largest divisor rule applies) */
  uint32_t topk;       /* coefficients sent per chunk, 1..65535 (default 4; clamped to the chunk size) */
  float decay;         /* momentum decay beta, in [0, 1) (default 0.999) */
  int value_mode;      /* distro_value_mode (default DISTRO_VALUES_SIGN) */
  const char *device;  /* device name from distro_devices_get, NULL for "cpu"; copied */
  uint32_t threads;    /* CPU worker threads 0..4096, 0 = one per core; results do not depend on it */
} distro_optimizer_options;

#define DISTRO_OPTIMIZER_OPTIONS_INIT \
  {sizeof(distro_optimizer_options), 0, 0, 64, 4, 0.999f, DISTRO_VALUES_SIGN, NULL, 0}

typedef struct distro_optimizer distro_optimizer;

/* Creates an optimizer. options may be NULL for the defaults.
 * Errors: INVALID_ARGUMENT (out NULL, a field out of range: the message names it), SIZE
 * (struct_size too small), NOT_FOUND (no such device), UNSUPPORTED (the device cannot run the
 * optimizer). The caller owns *out. */
DISTRO_API int distro_optimizer_create(distro_optimizer **out,
                                       const distro_optimizer_options *options);
DISTRO_API int distro_optimizer_destroy(distro_optimizer *optimizer);

/* Registers a trainable tensor. name: non-empty, at most 255 bytes, unique. shape: rank 1..8 positive
 * dimensions (a rank >= 3 tensor is chunked over its last two dimensions). params and grad: float32
 * host buffers of prod(shape) elements, owned by the caller and kept alive and in place until the
 * optimizer is destroyed. The optimizer reads grad during compress and writes params during apply;
 * it does not touch them at any other time. The optimizer's own state (the momentum) starts at zero.
 * Errors: INVALID_ARGUMENT, SIZE (bad shape), STATE (after the first compress or apply). */
DISTRO_API int distro_optimizer_add_tensor(distro_optimizer *optimizer, const char *name,
                                           const int64_t *shape, size_t rank, float *params,
                                           const float *grad);

/* Compresses this step's gradients into this peer's payload: delta = decay*delta + lr*grad, block DCT,
 * per-chunk top-k, and removal of what is sent from delta (error feedback).
 * *out_payload (allocated by the library, freed with distro_free) holds *out_size bytes in the wire
 * format of docs/protocol.md, stamped with the run id, step and peer id.
 * Errors: INVALID_ARGUMENT (NULL, lr not finite or < 0), STATE (no tensors), NUMERIC (a gradient
 * holds NaN or infinity, or lr * grad overflows the momentum: the message names the tensor and
 * element; no momentum is changed, so the step can be retried). */
DISTRO_API int distro_optimizer_compress(uint8_t **out_payload, size_t *out_size,
                                         distro_optimizer *optimizer, uint64_t step, float lr);

/* Applies a merged update (from distro_merger_finish) to the registered parameters:
 * theta = theta * decay_factor, then theta = theta - lr * sign(inverse DCT of the update), in exact
 * integer and IEEE float32 arithmetic, so every replica on every device gets the same bits.
 * If out_hash is not NULL it receives the parameter hash after the apply.
 * If the update names the hash the parameters should have before it (prev_hash != 0) and they do not,
 * nothing is applied and MISMATCH is returned: the replica has drifted and must resync.
 * Errors: INVALID_ARGUMENT, CORRUPT (malformed bytes: the message says which field), MISMATCH (another
 * run, manifest or version, or the prev_hash check). Nothing is written to the parameters unless the
 * whole update is valid. */
DISTRO_API int distro_optimizer_apply(uint64_t *out_hash, distro_optimizer *optimizer,
                                      const uint8_t *update, size_t size);

/* The hash of the registered parameters (docs/protocol.md, "parameter hash"): equal hashes mean
 * bit-identical replicas. Freezes the tensor list. Errors: INVALID_ARGUMENT, STATE (no tensors). */
DISTRO_API int distro_optimizer_param_hash(uint64_t *out_hash, distro_optimizer *optimizer);

/* The manifest hash: the tensor list, shapes, chunk plan and value mode, as every payload carries it.
 * Freezes the tensor list. Errors: INVALID_ARGUMENT, STATE (no tensors). */
DISTRO_API int distro_optimizer_manifest_hash(uint64_t *out_hash, distro_optimizer *optimizer);

typedef struct distro_optimizer_stats {
  size_t struct_size;          /* sizeof(distro_optimizer_stats) */
  uint64_t params;             /* parameters registered */
  uint64_t chunks;             /* chunks in the plan */
  uint64_t coefficients_sent;  /* coefficients in the last payload */
  uint64_t payload_bytes;      /* size of the last payload */
  double payload_bits_per_param; /* 8 * payload_bytes / params */
  uint64_t update_bytes;       /* size of the last applied update */
  double update_bits_per_param;
} distro_optimizer_stats;

#define DISTRO_OPTIMIZER_STATS_INIT {sizeof(distro_optimizer_stats), 0, 0, 0, 0, 0.0, 0, 0.0}

/* Fills *out with the optimizer's figures. Errors: INVALID_ARGUMENT, SIZE (struct_size too small). */
DISTRO_API int distro_optimizer_get_stats(distro_optimizer_stats *out,
                                          const distro_optimizer *optimizer);

/* ---------------------------------------------------------------------------------------------
 * Merging peers' payloads into one update
 *
 * A merger collects the payloads of one step, checks each as it arrives, and produces the merged
 * update that every peer applies. Each coefficient's merged value is the fixed-point mean
 * round(S * 256 / c) of the sum S of the peers' integer values and the count c of peers that sent
 * it (docs/protocol.md), so the result does not depend on the order payloads are added in.
 * ------------------------------------------------------------------------------------------- */

typedef struct distro_merger distro_merger;

/* Creates a merger for one step of the run that optimizer belongs to (it takes the manifest and run
 * id from it; the optimizer must outlive nothing: the merger copies what it needs).
 * Errors: INVALID_ARGUMENT, STATE (the optimizer has no tensors). The caller owns *out. */
DISTRO_API int distro_merger_create(distro_merger **out, distro_optimizer *optimizer,
                                    uint64_t step);
DISTRO_API int distro_merger_destroy(distro_merger *merger);

/* Checks and adds one peer's payload. A rejected payload changes nothing.
 * Errors: INVALID_ARGUMENT, CORRUPT (malformed), MISMATCH (other run, step, manifest, value mode or
 * wire version), STATE (a payload from this peer id was already added, or the merger is finished). */
DISTRO_API int distro_merger_add(distro_merger *merger, const uint8_t *payload, size_t size);

/* Number of payloads accepted so far. */
DISTRO_API int distro_merger_count(size_t *out_count, const distro_merger *merger);

/* Produces the merged update: the union of sent coefficients with their fixed-point means, the
 * learning rate lr and the weight-decay factor (1 - lr * weight_decay, computed once here in float32
 * and carried in the update so no replica recomputes it), and prev_hash, the parameter hash every
 * replica should hold before applying it (0 if unknown). *out_update is allocated by the library and
 * freed with distro_free. A merger with no payloads gives an update that applies weight decay only.
 * Errors: INVALID_ARGUMENT (NULL, lr or weight_decay not finite or negative, lr * weight_decay >= 1;
 * the merger stays open so the call can be retried), STATE (already finished). */
DISTRO_API int distro_merger_finish(uint8_t **out_update, size_t *out_size, distro_merger *merger,
                                    float lr, float weight_decay, uint64_t prev_hash);

/* ---------------------------------------------------------------------------------------------
 * Inspecting wire bytes
 * ------------------------------------------------------------------------------------------- */

typedef enum distro_message_kind {
  DISTRO_MESSAGE_PAYLOAD = 1, /* one peer's compressed momentum */
  DISTRO_MESSAGE_UPDATE = 2   /* the merged update of a step */
} distro_message_kind;

typedef struct distro_message_info {
  size_t struct_size;      /* sizeof(distro_message_info) */
  int kind;                /* distro_message_kind */
  int version;             /* wire version */
  int value_mode;          /* distro_value_mode */
  uint64_t run_id;
  uint64_t step;
  uint32_t peer_id;        /* payload: the sender; update: the number of contributing peers */
  uint64_t manifest_hash;
  uint64_t prev_hash;      /* update only: the expected parameter hash before it (0 if unknown) */
  float lr;                /* update only */
  float decay_factor;      /* update only */
} distro_message_info;

#define DISTRO_MESSAGE_INFO_INIT {sizeof(distro_message_info), 0, 0, 0, 0, 0, 0, 0, 0, 0.0f, 0.0f}

/* Reads and checks the header and checksum of a payload or update without a manifest.
 * Errors: INVALID_ARGUMENT, SIZE (struct_size too small), CORRUPT (with the reason), MISMATCH
 * (a wire version this library does not read). */
DISTRO_API int distro_message_inspect(distro_message_info *out, const uint8_t *bytes, size_t size);

#ifdef __cplusplus
}
#endif

#endif /* DISTRO_DISTRO_H */
