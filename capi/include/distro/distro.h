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
#define DISTRO_WIRE_VERSION 3

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


/* ---------------------------------------------------------------------------------------------
 * Local training of the built-in model
 *
 * A trainer runs N peers in this process, each with its own device, replica of the built-in
 * Llama-style model and optimizer state, on their own batches of one dataset. With the DisTrO
 * optimizer they exchange only compressed payloads and apply one merged update; with AdamW they
 * average their gradients exactly (the all-reduce baseline). After every step the trainer checks
 * that all replicas are bit-identical and fails with DISTRO_ERR_INTERNAL if they are not.
 * ------------------------------------------------------------------------------------------- */

typedef enum distro_optimizer_kind {
  DISTRO_OPTIMIZER_DISTRO = 1,
  DISTRO_OPTIMIZER_ADAMW = 2
} distro_optimizer_kind;

typedef struct distro_trainer_options {
  size_t struct_size;   /* sizeof(distro_trainer_options) */
  const char *preset;   /* "nano" (~1M params), "micro" (~5M), "small", "1b"; NULL = "nano" */
  int vocab;            /* 0 = the dataset's vocabulary (256 for text) */
  const char *data;     /* a UTF-8 text file (byte tokens) or an llm.c-style token shard; required */
  const char *devices;  /* comma-separated, one per peer: "cpu,cpu,cuda:0"; NULL = `peers` CPU peers */
  uint32_t peers;       /* peers when devices is NULL (default 4) */
  int optimizer;        /* distro_optimizer_kind (default DISTRO) */
  uint64_t steps;       /* total steps: the length of the learning-rate schedule (default 200) */
  uint32_t batch;       /* sequences per peer per step (default 8) */
  uint32_t micro_batch; /* sequences per forward/backward, a divisor of batch; 0 = batch */
  uint32_t seq;         /* sequence length (default 128) */
  float lr;             /* peak learning rate; 0 = 3e-3 for nano and micro, 4e-4 for larger presets */
  uint64_t warmup;      /* linear warmup steps; 0 = min(100, steps / 10); cosine decay after */
  float min_lr_ratio;   /* the schedule ends at this fraction of the peak (default 0.1) */
  float weight_decay;   /* decoupled weight decay (default 0) */
  float clip;           /* gradient-norm clip, 0 = off (default 1) */
  uint32_t chunk;       /* DisTrO chunk edge (default 64) */
  uint32_t topk;        /* DisTrO coefficients per chunk (default 4) */
  float decay;          /* DisTrO momentum decay (default 0.999) */
  int value_mode;       /* distro_value_mode (default sign) */
  uint64_t seed;        /* initialisation and batches (default 1) */
  uint32_t threads;     /* CPU threads per peer, 0 = one per core */
  uint64_t eval_batches; /* validation batches per distro_trainer_evaluate (default 8) */
} distro_trainer_options;

#define DISTRO_TRAINER_OPTIONS_INIT                                                               \
  {sizeof(distro_trainer_options), NULL, 0, NULL, NULL, 4, DISTRO_OPTIMIZER_DISTRO, 200, 8, 0, 128, \
   0.0f, 0, 0.1f, 0.0f, 1.0f, 64, 4, 0.999f, DISTRO_VALUES_SIGN, 1, 0, 8}

typedef struct distro_trainer distro_trainer;

/* Loads the data, builds every peer's model (the same seeded initialisation) and optimizer.
 * Errors: INVALID_ARGUMENT (a field out of range: the message names it), SIZE (struct_size),
 * NOT_FOUND (data file, preset or device), CORRUPT (a malformed token shard), UNSUPPORTED,
 * OUT_OF_MEMORY. The caller owns *out. */
DISTRO_API int distro_trainer_create(distro_trainer **out, const distro_trainer_options *options);

/* Continues a run saved with distro_trainer_save (dir holds checkpoint.bin) with the settings it was
 * saved with: the resumed run is bit for bit the run that never stopped.
 * Errors: INVALID_ARGUMENT, NOT_FOUND, CORRUPT (truncated or damaged file: the message says which),
 * MISMATCH (a checkpoint version this library does not read). */
DISTRO_API int distro_trainer_resume(distro_trainer **out, const char *dir);
DISTRO_API int distro_trainer_destroy(distro_trainer *trainer);

typedef struct distro_step_stats {
  size_t struct_size;        /* sizeof(distro_step_stats) */
  uint64_t step;             /* the step just taken, from 1 */
  float lr;
  double train_loss;         /* mean over peers of their batch loss */
  double grad_norm;          /* peer 0's gradient norm before clipping */
  uint64_t tokens;           /* trained in this step by all peers */
  uint64_t bytes_up_per_peer;   /* DisTrO: the payload; AdamW: half of a bf16 ring all-reduce */
  uint64_t bytes_down_per_peer; /* DisTrO: the merged update; AdamW: the other half, so that up plus
                                   down equals distro_trainer_info.allreduce_bytes_per_peer */
  double seconds;
  uint64_t replica_hash;     /* every replica's parameter hash after the step (they are equal) */
} distro_step_stats;

#define DISTRO_STEP_STATS_INIT {sizeof(distro_step_stats), 0, 0.0f, 0.0, 0.0, 0, 0, 0, 0.0, 0}

/* Takes one step with every peer. out may be NULL.
 * Errors: INVALID_ARGUMENT, SIZE, STATE (the run already has all its steps: raise them with
 * distro_trainer_set_total_steps), NUMERIC, INTERNAL (replicas differ: a bug). */
DISTRO_API int distro_trainer_step(distro_step_stats *out, distro_trainer *trainer);

/* Mean validation loss of peer 0 over the configured number of fixed validation batches.
 * Errors: INVALID_ARGUMENT, STATE (the dataset has no validation part). */
DISTRO_API int distro_trainer_evaluate(double *out_loss, distro_trainer *trainer);

/* Writes dir/checkpoint.bin atomically (parameters, optimizer state, step, settings; the data
 * position follows from the step). Errors: INVALID_ARGUMENT, IO (the message names the path). */
DISTRO_API int distro_trainer_save(distro_trainer *trainer, const char *dir);

typedef struct distro_trainer_info {
  size_t struct_size;        /* sizeof(distro_trainer_info) */
  uint64_t params;           /* parameters of the model */
  uint32_t peers;
  uint64_t steps_done;
  uint64_t steps_total;
  uint64_t allreduce_bytes_per_peer; /* 2(N-1)/N * 2 bytes * params, sent plus received: a bf16
                                        ring all-reduce of the gradient */
} distro_trainer_info;

#define DISTRO_TRAINER_INFO_INIT {sizeof(distro_trainer_info), 0, 0, 0, 0, 0}

DISTRO_API int distro_trainer_get_info(distro_trainer_info *out, const distro_trainer *trainer);

/* Changes the run's total steps (the schedule's length); at least the steps already done.
 * Errors: INVALID_ARGUMENT. */
DISTRO_API int distro_trainer_set_total_steps(distro_trainer *trainer, uint64_t steps);

/* ---------------------------------------------------------------------------------------------
 * Contribution history
 *
 * A coordinator keeps a ledger (a SQLite file) of every committed round and of each node's
 * contribution to it: bytes up and down, tokens trained, accepted or refused and why. A history
 * handle opens a ledger read-only, so an app can show a person's contributions while the
 * coordinator goes on writing it; every query sees whole rounds only. Use it like this:
 *   1. distro_history_open with the ledger's path;
 *   2. distro_history_query_totals (one entry per node) or distro_history_query_contributions (one
 *      node's or every node's, newest first) takes a snapshot into the handle and gives its count;
 *   3. distro_history_get_totals / distro_history_get_contribution read the snapshot's entries by
 *      index; they stay valid until the next query of the same kind on this handle.
 * ------------------------------------------------------------------------------------------- */

typedef struct distro_history distro_history;

typedef struct distro_node_totals {
  size_t struct_size;   /* sizeof(distro_node_totals) */
  char node[128];       /* the node's name (at most 127 bytes, NUL-terminated) */
  uint64_t rounds;      /* rounds with an accepted contribution */
  uint64_t tokens;      /* tokens trained in its accepted contributions */
  uint64_t bytes_up;    /* sent, over all its contributions (refused ones too) */
  uint64_t bytes_down;  /* received, over all its contributions */
  uint64_t rejected;    /* contributions refused */
  int64_t first_ms;     /* its first and last contribution, ms since 1970-01-01 UTC */
  int64_t last_ms;
} distro_node_totals;

#define DISTRO_NODE_TOTALS_INIT {sizeof(distro_node_totals), {0}, 0, 0, 0, 0, 0, 0, 0}

typedef struct distro_contribution {
  size_t struct_size;   /* sizeof(distro_contribution) */
  char node[128];       /* the node's name, NUL-terminated */
  uint64_t step;        /* the round */
  uint64_t bytes_up;    /* its payload on the wire */
  uint64_t bytes_down;  /* the merged update it received */
  uint64_t tokens;      /* tokens it trained for the round */
  int accepted;         /* 1: merged into the round's update; 0: refused (see reason) */
  char reason[256];     /* why it was refused, "" when accepted (NUL-terminated, at most 255 bytes) */
  int64_t unix_ms;      /* when it was recorded, ms since 1970-01-01 UTC */
} distro_contribution;

#define DISTRO_CONTRIBUTION_INIT {sizeof(distro_contribution), {0}, 0, 0, 0, 0, 0, {0}, 0}

/* Opens the ledger at path (UTF-8 or the platform's bytes) read-only; nothing is ever written to it.
 * Errors: INVALID_ARGUMENT (NULL), NOT_FOUND (no such file), CORRUPT (not a SQLite file, an empty
 * file, or a damaged ledger), MISMATCH (another application's database, or a ledger written by a
 * newer libdistro), IO (cannot be read, or locked by a writer for over 5 seconds). The message
 * names the file. The caller owns *out. */
DISTRO_API int distro_history_open(distro_history **out, const char *path);
DISTRO_API int distro_history_destroy(distro_history *history);

/* The highest committed round (step), 0 for a ledger with none.
 * Errors: INVALID_ARGUMENT, CORRUPT, IO. */
DISTRO_API int distro_history_last_round(uint64_t *out_step, const distro_history *history);

/* Takes a snapshot of the per-node totals, sorted by node name (bytewise), and gives its number of
 * entries. Errors: INVALID_ARGUMENT, CORRUPT, IO; on failure the previous snapshot is kept. */
DISTRO_API int distro_history_query_totals(size_t *out_count, distro_history *history);
/* Fills *out with entry index (0 .. count-1) of the last totals snapshot. out->struct_size must be
 * set (DISTRO_NODE_TOTALS_INIT). Errors: INVALID_ARGUMENT, SIZE (struct_size too small), NOT_FOUND
 * (index out of range). */
DISTRO_API int distro_history_get_totals(distro_node_totals *out, const distro_history *history,
                                         size_t index);

/* Takes a snapshot of contributions, newest first (by step, then node name), and gives its number
 * of entries. node: one node's name, or NULL (or "") for every node's. limit: at most this many
 * entries, 0 for all. Errors: INVALID_ARGUMENT, CORRUPT, IO; on failure the previous snapshot is
 * kept. */
DISTRO_API int distro_history_query_contributions(size_t *out_count, distro_history *history,
                                                  const char *node, uint64_t limit);
/* Fills *out with entry index of the last contributions snapshot. out->struct_size must be set
 * (DISTRO_CONTRIBUTION_INIT). Errors: INVALID_ARGUMENT, SIZE, NOT_FOUND (index out of range). */
DISTRO_API int distro_history_get_contribution(distro_contribution *out, const distro_history *history,
                                               size_t index);

/* ---------------------------------------------------------------------------------------------
 * Network: coordinator and node
 *
 * A coordinator owns one network run (docs/network.md): it listens over TLS 1.3, serves the nodes
 * their batches, merges their payloads each round and keeps durable state in its state folder. A
 * node joins a coordinator with its token, trains the batches it is given and keeps its replica
 * bit-identical to the others'. Both run on their own threads once started; the calls below only
 * steer and observe them. Use them like this:
 *   1. distro_coordinator_create (or distro_node_create) with options;
 *   2. optionally distro_*_set_event_callback, then distro_*_start;
 *   3. distro_*_get_status whenever you like; pause, resume, set limits while it runs;
 *   4. distro_*_finish (after the open round) or distro_*_stop (now), then distro_*_wait until
 *      *out_done is 1 (each wait returns after at most timeout_ms), then distro_*_destroy.
 * destroy also stops and waits; it may block for up to about 8 seconds while connections close.
 *
 * Thread rule for these handles (unlike the rest of this header): every call on a coordinator or
 * node handle may be made from any thread, also at the same time, except destroy, which must not
 * overlap another call on the same handle.
 * ------------------------------------------------------------------------------------------- */

typedef struct distro_coordinator distro_coordinator;
typedef struct distro_node distro_node;

/* A coordinator's or a node's state (distro_coordinator_status.state, distro_node_status.state).
 * The text form is in the status's state_name. */
typedef enum distro_net_state {
  DISTRO_NET_UNKNOWN = 0,    /* a state this header does not know (read state_name) */
  DISTRO_NET_CREATED = 1,    /* not started */
  DISTRO_NET_WAITING = 2,    /* coordinator: waiting for nodes before the next round */
  DISTRO_NET_CONNECTING = 3, /* node: connecting or reconnecting (with backoff) */
  DISTRO_NET_SYNCING = 4,    /* node: downloading the checkpoint or catching up */
  DISTRO_NET_TRAINING = 5,   /* a round is open (coordinator) / in sync and taking batches (node) */
  DISTRO_NET_PAUSED = 6,
  DISTRO_NET_FINISHING = 7,  /* coordinator: ends after the open round */
  DISTRO_NET_LEAVING = 8,    /* node: leaves after its round */
  DISTRO_NET_STOPPING = 9,   /* node: closing its connection */
  DISTRO_NET_COMPLETE = 10,  /* the run has all its steps (final) */
  DISTRO_NET_LEFT = 11,      /* node: left the run (final) */
  DISTRO_NET_STOPPED = 12,   /* stopped by its host or by the coordinator's end (final) */
  DISTRO_NET_FAILED = 13     /* final; distro_node_status.error says why */
} distro_net_state;

typedef enum distro_net_event_kind {
  DISTRO_NET_EVENT_STEP_DONE = 1, /* a round's update was applied (step = that step) */
  DISTRO_NET_EVENT_JOINED = 2,    /* coordinator: a node joined (node = its name); node: it joined */
  DISTRO_NET_EVENT_LEFT = 3,      /* coordinator: a node left or was cut off; node: it left */
  DISTRO_NET_EVENT_ERROR = 4,     /* something was refused or failed (message: what and why) */
  DISTRO_NET_EVENT_LIMIT_HIT = 5, /* a rate cap held traffic back (message: which, how long) */
  DISTRO_NET_EVENT_INFO = 6       /* anything else worth a log line */
} distro_net_event_kind;

typedef struct distro_net_event {
  size_t struct_size;  /* sizeof(distro_net_event) as the library was built; read only what your
                          header's struct holds */
  int kind;            /* distro_net_event_kind */
  uint64_t step;       /* the step it concerns (for STEP_DONE, the step just applied) */
  const char *node;    /* the node's name, "" when the event is about no node; never NULL */
  const char *message; /* one line for humans; never NULL */
} distro_net_event;

/* An event callback. It is called on the library's io thread of that handle, one event at a time,
 * in order; event and its strings are valid only during the call. It must return quickly, must not
 * call distro_*_wait or distro_*_destroy on the handle that called it (those answer STATE if it
 * does), and may call any other function. */
typedef void (*distro_net_event_fn)(const distro_net_event *event, void *user_data);

/* Options of a coordinator. Exactly one of config_path and config_json is given. */
typedef struct distro_coordinator_options {
  size_t struct_size;      /* sizeof(distro_coordinator_options) */
  const char *config_path; /* a run configuration file (JSON, docs/network.md); its tokens are
                              re-read when it changes */
  const char *config_json; /* or the same JSON as text (relative paths are then relative to the
                              working directory, and tokens cannot be reloaded) */
  const char *listen;      /* NULL, or "host:port" overriding the configuration's (port 0 = any) */
  const char *state_dir;   /* NULL, or a folder overriding the configuration's state_dir */
  uint64_t steps;          /* 0, or the run's total steps overriding the configuration's */
} distro_coordinator_options;

#define DISTRO_COORDINATOR_OPTIONS_INIT {sizeof(distro_coordinator_options), NULL, NULL, NULL, NULL, 0}

/* Reads and checks the configuration, loads the data, builds the model and, when the state folder
 * holds a checkpoint of this run, resumes from it. Nothing listens yet.
 * Errors: INVALID_ARGUMENT (NULL, both or neither config given, a bad key or value: the message
 * names the file, key and what is expected), SIZE (struct_size), NOT_FOUND (config or data file),
 * CORRUPT (a damaged checkpoint or data), MISMATCH (the state folder holds another run's
 * checkpoint, or one made with other settings), IO. The caller owns *out. */
DISTRO_API int distro_coordinator_create(distro_coordinator **out,
                                         const distro_coordinator_options *options);
/* Stops the coordinator if it runs, waits for its threads, frees it. Accepts NULL.
 * Errors: INVALID_ARGUMENT (not live), STATE (called from its own event callback). */
DISTRO_API int distro_coordinator_destroy(distro_coordinator *coordinator);
/* Sets the event callback (fn NULL = none). user_data is passed back untouched.
 * Errors: INVALID_ARGUMENT, STATE (after start). */
DISTRO_API int distro_coordinator_set_event_callback(distro_coordinator *coordinator,
                                                     distro_net_event_fn fn, void *user_data);
/* Binds the listen address and starts the run's thread.
 * Errors: INVALID_ARGUMENT, STATE (started already), IO (the address cannot be bound; the call
 * may then be retried). */
DISTRO_API int distro_coordinator_start(distro_coordinator *coordinator);
/* No new rounds (the open one completes) / new rounds again. Errors: INVALID_ARGUMENT, STATE (not
 * started). */
DISTRO_API int distro_coordinator_pause(distro_coordinator *coordinator);
DISTRO_API int distro_coordinator_resume(distro_coordinator *coordinator);
/* Ends the run after the open round: checkpoint, tell the nodes, stop. Errors: as pause. */
DISTRO_API int distro_coordinator_finish(distro_coordinator *coordinator);
/* Stops now; the durable state is the last checkpoint. Before start it only marks the handle
 * stopped. Errors: INVALID_ARGUMENT. */
DISTRO_API int distro_coordinator_stop(distro_coordinator *coordinator);
/* Waits up to timeout_ms milliseconds (0 = just look) for the coordinator to end (by stop, finish,
 * the run completing or a fatal error). *out_done is 1 when it has ended and its threads are gone,
 * 0 when the time ran out; both are DISTRO_OK. A coordinator never started counts as ended.
 * Errors: INVALID_ARGUMENT, STATE (called from its own event callback). */
DISTRO_API int distro_coordinator_wait(int *out_done, distro_coordinator *coordinator,
                                       uint32_t timeout_ms);
/* The default caps of every node, live, in bytes/s (0 = unlimited): up_bps what a node may send
 * the coordinator, down_bps what it sends a node. Errors: INVALID_ARGUMENT (negative or not
 * finite), STATE (not started). */
DISTRO_API int distro_coordinator_set_limits(distro_coordinator *coordinator, double up_bps,
                                             double down_bps);
/* The port it listens on (the real one when the configuration said 0).
 * Errors: INVALID_ARGUMENT, STATE (not started). */
DISTRO_API int distro_coordinator_port(uint16_t *out_port, const distro_coordinator *coordinator);

/* "sha256:" and 64 lowercase hex digits, NUL-terminated. */
#define DISTRO_FINGERPRINT_SIZE 72

/* The fingerprint of the coordinator's TLS certificate, for the nodes' pin (known from create on).
 * out receives at most capacity bytes, NUL included.
 * Errors: INVALID_ARGUMENT, SIZE (capacity < DISTRO_FINGERPRINT_SIZE). */
DISTRO_API int distro_coordinator_fingerprint(char *out, size_t capacity,
                                              const distro_coordinator *coordinator);

typedef struct distro_coordinator_status {
  size_t struct_size;        /* sizeof(distro_coordinator_status) */
  int state;                 /* distro_net_state */
  char state_name[32];       /* "created", "waiting", "training", "paused", "finishing", "complete",
                                "stopped", "failed" */
  uint64_t step;             /* steps applied (the last completed round) */
  uint64_t total_steps;
  uint64_t rounds_done;      /* rounds completed by this process */
  uint32_t nodes_connected;
  uint32_t nodes_in_sync;
  uint64_t bytes_up;         /* received from nodes, all connections of this process */
  uint64_t bytes_down;       /* sent to nodes */
  double last_round_seconds;
  uint64_t param_hash;       /* of the parameters at step */
} distro_coordinator_status;

#define DISTRO_COORDINATOR_STATUS_INIT \
  {sizeof(distro_coordinator_status), 0, {0}, 0, 0, 0, 0, 0, 0, 0, 0.0, 0}

/* A snapshot of the coordinator's state (refreshed at least every second and at every change).
 * Errors: INVALID_ARGUMENT, SIZE (struct_size too small). */
DISTRO_API int distro_coordinator_get_status(distro_coordinator_status *out,
                                             const distro_coordinator *coordinator);

/* Options of a node. */
typedef struct distro_node_options {
  size_t struct_size;      /* sizeof(distro_node_options) */
  const char *coordinator; /* "host:port"; required */
  const char *token;       /* this node's run token; required */
  const char *device;      /* "cpu", "cuda:0", ...; NULL = "cpu" */
  const char *pin;         /* "sha256:<64 hex>" to require that certificate; NULL or "" = accept any */
  double up_limit;         /* bytes/s this node sends, 0 = unlimited */
  double down_limit;       /* bytes/s it receives, 0 = unlimited */
  const char *history;     /* a local ledger file of its contributions; NULL = none */
  uint32_t threads;        /* CPU threads of a CPU device, 0 = all cores */
  double retry_min_s;      /* reconnect backoff: first delay (default 0.5) */
  double retry_max_s;      /* and cap (default 30), 0 < min <= max <= 86400 */
  const char *agent;       /* free text the coordinator logs; NULL = "distro node, device ..." */
} distro_node_options;

#define DISTRO_NODE_OPTIONS_INIT \
  {sizeof(distro_node_options), NULL, NULL, NULL, NULL, 0.0, 0.0, NULL, 0, 0.5, 30.0, NULL}

/* Checks the options; connects nothing yet.
 * Errors: INVALID_ARGUMENT (NULL, a bad address, token, pin, limit or delay: the message names
 * it), SIZE (struct_size). The caller owns *out. */
DISTRO_API int distro_node_create(distro_node **out, const distro_node_options *options);
/* Stops the node if it runs, waits for its threads, frees it. Accepts NULL.
 * Errors: INVALID_ARGUMENT (not live), STATE (called from its own event callback). */
DISTRO_API int distro_node_destroy(distro_node *node);
/* As distro_coordinator_set_event_callback. */
DISTRO_API int distro_node_set_event_callback(distro_node *node, distro_net_event_fn fn,
                                              void *user_data);
/* Starts its threads and the first connection; network failures are then reported by events and
 * the status, never by this call. Errors: INVALID_ARGUMENT, STATE (started already). */
DISTRO_API int distro_node_start(distro_node *node);
/* Takes no new batches (it still follows the updates and stays in sync) / takes them again.
 * Errors: INVALID_ARGUMENT, STATE (not started). */
DISTRO_API int distro_node_pause(distro_node *node);
DISTRO_API int distro_node_resume(distro_node *node);
/* Finishes the round it is in (if any), then leaves. Errors: as pause. */
DISTRO_API int distro_node_finish(distro_node *node);
/* Leaves now. Errors: INVALID_ARGUMENT. */
DISTRO_API int distro_node_stop(distro_node *node);
/* As distro_coordinator_wait: *out_done is 1 once the node left, the run completed, it failed or
 * was stopped, and its threads are gone. */
DISTRO_API int distro_node_wait(int *out_done, distro_node *node, uint32_t timeout_ms);
/* This node's caps, live, bytes/s (0 = unlimited).
 * Errors: INVALID_ARGUMENT (negative or not finite), STATE (not started). */
DISTRO_API int distro_node_set_limits(distro_node *node, double up_bps, double down_bps);

typedef struct distro_node_status {
  size_t struct_size;        /* sizeof(distro_node_status) */
  int state;                 /* distro_net_state */
  char state_name[32];       /* "created", "connecting", "syncing", "training", "paused", "leaving",
                                "stopping", "complete", "left", "stopped", "failed" */
  char node_name[128];       /* the name the coordinator knows it by ("" before it joined) */
  uint32_t node_id;
  uint64_t step;             /* steps applied to this node's replica */
  uint64_t total_steps;
  uint64_t param_hash;       /* of its replica at step */
  uint64_t rounds_trained;   /* batches it trained and uploaded */
  uint64_t rounds_accepted;  /* of those, merged into an update */
  uint64_t bytes_up;         /* all connections of this node */
  uint64_t bytes_down;
  double last_loss;
  double last_train_seconds;
  uint32_t reconnects;
  char coordinator_fingerprint[DISTRO_FINGERPRINT_SIZE]; /* "" before the first connection */
  char error[256];           /* why it failed (state FAILED), else ""; cut to 255 bytes */
} distro_node_status;

#define DISTRO_NODE_STATUS_INIT                                                           \
  {sizeof(distro_node_status), 0, {0}, {0}, 0, 0, 0, 0, 0, 0, 0, 0, 0.0, 0.0, 0, {0}, {0}}

/* A snapshot of the node's state. Errors: INVALID_ARGUMENT, SIZE (struct_size too small). */
DISTRO_API int distro_node_get_status(distro_node_status *out, const distro_node *node);

#ifdef __cplusplus
}
#endif

#endif /* DISTRO_DISTRO_H */
