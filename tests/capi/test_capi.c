/* The C API from C99: built with -std=c99 -Wall -Wextra -pedantic -Werror, so it also proves the
 * header is clean C99. Exercises misuse (NULL, sizes, order, double destroy) and one full round trip.
 * Prints "N passed, N failed" and exits non-zero on any failure. */
#include <distro/distro.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

static int passed, failed;

#include "expect.h"

static void versions(void) {
  EXPECT(distro_version_number() == DISTRO_VERSION_NUMBER);
  EXPECT(strcmp(distro_version(), DISTRO_VERSION_STRING) == 0);
  EXPECT(distro_abi_version() == DISTRO_ABI_VERSION);
  EXPECT(strcmp(distro_status_name(DISTRO_ERR_CORRUPT), "DISTRO_ERR_CORRUPT") == 0);
  EXPECT(strcmp(distro_status_name(999), "unknown status") == 0);
}

static void devices(void) {
  distro_devices *d = NULL;
  size_t n = 0;
  distro_device_info info = DISTRO_DEVICE_INFO_INIT;
  EXPECT_STATUS(distro_devices_scan(NULL), DISTRO_ERR_INVALID_ARGUMENT, "out is NULL");
  EXPECT(distro_devices_scan(&d) == DISTRO_OK);
  EXPECT(strcmp(distro_last_error(), "") == 0);
  EXPECT(distro_devices_count(&n, d) == DISTRO_OK && n >= 1);
  EXPECT(distro_devices_get(&info, d, 0) == DISTRO_OK);
  EXPECT(strcmp(info.name, "cpu") == 0 && info.kind == DISTRO_DEVICE_CPU);
  EXPECT((info.flags & DISTRO_DEVICE_OPTIMIZER) != 0 && info.memory_total > 0);
  EXPECT_STATUS(distro_devices_get(&info, d, n), DISTRO_ERR_NOT_FOUND, "out of range");
  info.struct_size = 8;
  EXPECT_STATUS(distro_devices_get(&info, d, 0), DISTRO_ERR_SIZE, "struct_size is 8");
  EXPECT_STATUS(distro_devices_count(&n, NULL), DISTRO_ERR_INVALID_ARGUMENT, "devices is NULL");
  EXPECT(distro_devices_destroy(d) == DISTRO_OK);
  EXPECT_STATUS(distro_devices_destroy(d), DISTRO_ERR_INVALID_ARGUMENT, "not live");
  EXPECT_STATUS(distro_devices_count(&n, d), DISTRO_ERR_INVALID_ARGUMENT, "not live");
  EXPECT(distro_devices_destroy(NULL) == DISTRO_OK);
}

enum { ROWS = 64, COLS = 128, PEERS = 3 };
static float params[PEERS][ROWS * COLS], grads[PEERS][ROWS * COLS];
static float bias[PEERS][COLS], bias_grad[PEERS][COLS];

static float noise(unsigned *state) {
  *state = *state * 1664525u + 1013904223u;
  return (float)((*state >> 8) & 0xFFFF) / 32768.0f - 1.0f;
}

static void misuse(void) {
  distro_optimizer *o = NULL;
  distro_optimizer_options opt = DISTRO_OPTIMIZER_OPTIONS_INIT;
  int64_t shape[2] = {ROWS, COLS};
  uint8_t *bytes = NULL;
  size_t size = 0;
  uint64_t h = 0;

  opt.struct_size = 4;
  EXPECT_STATUS(distro_optimizer_create(&o, &opt), DISTRO_ERR_SIZE, "struct_size");
  opt = (distro_optimizer_options)DISTRO_OPTIMIZER_OPTIONS_INIT;
  opt.decay = 1.5f;
  EXPECT_STATUS(distro_optimizer_create(&o, &opt), DISTRO_ERR_INVALID_ARGUMENT, "decay");
  opt.decay = 0.9f;
  opt.value_mode = 7;
  EXPECT_STATUS(distro_optimizer_create(&o, &opt), DISTRO_ERR_INVALID_ARGUMENT, "value_mode");
  opt.value_mode = DISTRO_VALUES_SIGN;
  opt.device = "cuda:42";
  EXPECT_STATUS(distro_optimizer_create(&o, &opt), DISTRO_ERR_NOT_FOUND, "no device named 'cuda:42'");
  opt.device = NULL;
  EXPECT(o == NULL);
  EXPECT(distro_optimizer_create(&o, &opt) == DISTRO_OK);

  /* Wrong order: nothing registered yet. */
  EXPECT_STATUS(distro_optimizer_compress(&bytes, &size, o, 1, 0.01f), DISTRO_ERR_STATE, "no tensors");
  EXPECT(bytes == NULL);
  /* Bad tensors. */
  EXPECT_STATUS(distro_optimizer_add_tensor(o, NULL, shape, 2, params[0], grads[0]), DISTRO_ERR_INVALID_ARGUMENT, "name is NULL");
  EXPECT_STATUS(distro_optimizer_add_tensor(o, "w", shape, 0, params[0], grads[0]), DISTRO_ERR_SIZE, "rank is 0");
  shape[1] = -1;
  EXPECT_STATUS(distro_optimizer_add_tensor(o, "w", shape, 2, params[0], grads[0]), DISTRO_ERR_SIZE, "dimension 1 = -1");
  shape[1] = COLS;
  EXPECT_STATUS(distro_optimizer_add_tensor(o, "w", shape, 2, params[0], NULL), DISTRO_ERR_INVALID_ARGUMENT, "grad is NULL");
  EXPECT(distro_optimizer_add_tensor(o, "w", shape, 2, params[0], grads[0]) == DISTRO_OK);
  EXPECT_STATUS(distro_optimizer_add_tensor(o, "w", shape, 2, params[0], grads[0]), DISTRO_ERR_INVALID_ARGUMENT, "registered twice");
  EXPECT_STATUS(distro_optimizer_compress(&bytes, &size, o, 1, NAN), DISTRO_ERR_INVALID_ARGUMENT, "learning rate");
  EXPECT_STATUS(distro_optimizer_compress(NULL, &size, o, 1, 0.01f), DISTRO_ERR_INVALID_ARGUMENT, "out_payload is NULL");
  EXPECT(distro_optimizer_compress(&bytes, &size, o, 1, 0.01f) == DISTRO_OK);
  distro_free(bytes);
  /* Wrong order: tensors are frozen after the first step. */
  EXPECT_STATUS(distro_optimizer_add_tensor(o, "late", shape, 2, params[0], grads[0]), DISTRO_ERR_STATE, "after the first step");
  /* Garbage where an update belongs. */
  {
    uint8_t junk[64];
    memset(junk, 0xAB, sizeof junk);
    EXPECT(distro_optimizer_apply(&h, o, junk, sizeof junk) == DISTRO_ERR_CORRUPT);
    EXPECT(distro_optimizer_apply(&h, o, junk, 0) == DISTRO_ERR_CORRUPT);
  }
  EXPECT(distro_optimizer_destroy(o) == DISTRO_OK);
  EXPECT_STATUS(distro_optimizer_destroy(o), DISTRO_ERR_INVALID_ARGUMENT, "not live");
  EXPECT_STATUS(distro_optimizer_param_hash(&h, o), DISTRO_ERR_INVALID_ARGUMENT, "not live");
  EXPECT_STATUS(distro_optimizer_param_hash(&h, NULL), DISTRO_ERR_INVALID_ARGUMENT, "NULL");
}

static void round_trip(void) {
  distro_optimizer *o[PEERS];
  unsigned seed = 12345u;
  int p, step;
  size_t i;
  int64_t wshape[2] = {ROWS, COLS}, bshape[1] = {COLS};
  for (i = 0; i < ROWS * COLS; ++i) params[0][i] = 0.02f * noise(&seed);
  for (i = 0; i < COLS; ++i) bias[0][i] = 0.02f * noise(&seed);
  for (p = 0; p < PEERS; ++p) {
    distro_optimizer_options opt = DISTRO_OPTIMIZER_OPTIONS_INIT;
    opt.run_id = 9;
    opt.peer_id = (uint32_t)p;
    opt.threads = (uint32_t)(1 + p % 2);
    memcpy(params[p], params[0], sizeof params[0]);
    memcpy(bias[p], bias[0], sizeof bias[0]);
    EXPECT(distro_optimizer_create(&o[p], &opt) == DISTRO_OK);
    EXPECT(distro_optimizer_add_tensor(o[p], "w", wshape, 2, params[p], grads[p]) == DISTRO_OK);
    EXPECT(distro_optimizer_add_tensor(o[p], "b", bshape, 1, bias[p], bias_grad[p]) == DISTRO_OK);
  }
  for (step = 1; step <= 5; ++step) {
    distro_merger *m = NULL;
    uint8_t *update = NULL;
    size_t usize = 0, count = 0;
    uint64_t prev = 0, hash[PEERS];
    EXPECT(distro_optimizer_param_hash(&prev, o[0]) == DISTRO_OK);
    EXPECT(distro_merger_create(&m, o[0], (uint64_t)step) == DISTRO_OK);
    for (p = 0; p < PEERS; ++p) {
      uint8_t *payload = NULL;
      size_t size = 0;
      distro_message_info info = DISTRO_MESSAGE_INFO_INIT;
      for (i = 0; i < ROWS * COLS; ++i) grads[p][i] = noise(&seed);
      for (i = 0; i < COLS; ++i) bias_grad[p][i] = noise(&seed);
      EXPECT(distro_optimizer_compress(&payload, &size, o[p], (uint64_t)step, 0.01f) == DISTRO_OK);
      EXPECT(distro_message_inspect(&info, payload, size) == DISTRO_OK);
      EXPECT(info.kind == DISTRO_MESSAGE_PAYLOAD && info.peer_id == (uint32_t)p && info.step == (uint64_t)step);
      EXPECT(distro_merger_add(m, payload, size) == DISTRO_OK);
      EXPECT_STATUS(distro_merger_add(m, payload, size), DISTRO_ERR_STATE, "already added");
      distro_free(payload);
    }
    EXPECT(distro_merger_count(&count, m) == DISTRO_OK && count == PEERS);
    EXPECT(distro_merger_finish(&update, &usize, m, 0.01f, 0.1f, prev) == DISTRO_OK);
    EXPECT_STATUS(distro_merger_finish(&update, &usize, m, 0.01f, 0.1f, prev), DISTRO_ERR_STATE, "already finished");
    for (p = 0; p < PEERS; ++p) EXPECT(distro_optimizer_apply(&hash[p], o[p], update, usize) == DISTRO_OK);
    for (p = 1; p < PEERS; ++p) EXPECT(hash[p] == hash[0]);
    EXPECT(memcmp(params[0], params[PEERS - 1], sizeof params[0]) == 0);
    /* Applying the same update again: the parameters no longer have the expected hash. */
    EXPECT_STATUS(distro_optimizer_apply(&hash[0], o[0], update, usize), DISTRO_ERR_MISMATCH, "drifted");
    distro_free(update);
    EXPECT(distro_merger_destroy(m) == DISTRO_OK);
  }
  {
    distro_optimizer_stats s = DISTRO_OPTIMIZER_STATS_INIT;
    EXPECT(distro_optimizer_get_stats(&s, o[0]) == DISTRO_OK);
    EXPECT(s.params == ROWS * COLS + COLS && s.payload_bytes > 0 && s.update_bytes > 0);
  }
  for (p = 0; p < PEERS; ++p) EXPECT(distro_optimizer_destroy(o[p]) == DISTRO_OK);
}

/* Copies a file byte for byte; 0 on success. */
static int copy_file(const char *from, const char *to) {
  FILE *in = fopen(from, "rb"), *out = in ? fopen(to, "wb") : NULL;
  char buf[4096];
  size_t n;
  int rc = in && out ? 0 : -1;
  while (rc == 0 && (n = fread(buf, 1, sizeof buf, in)) > 0)
    if (fwrite(buf, 1, n, out) != n) rc = -1;
  if (in) fclose(in);
  if (out && fclose(out) != 0) rc = -1;
  return rc;
}

/* The contribution history over a copy of tests/data/ledger-v1.sqlite (the C++ ledger test writes
 * and checks that file: three rounds of alice and bob, carol refused in round 2). A copy, because
 * even a read-only reader of a WAL database leaves -wal and -shm files beside it. */
static void history(void) {
  const char *copy = "distro_capi_history.sqlite", *junk = "distro_capi_history_junk.sqlite";
  distro_history *h = NULL;
  distro_node_totals t = DISTRO_NODE_TOTALS_INIT;
  distro_contribution c = DISTRO_CONTRIBUTION_INIT;
  size_t n = 0, i;
  uint64_t last = 0;
  FILE *f;

  EXPECT(copy_file(DISTRO_TEST_DATA "/ledger-v1.sqlite", copy) == 0);
  f = fopen(junk, "wb");
  EXPECT(f != NULL);
  if (f) {
    for (i = 0; i < 5000; ++i) fputc((int)((i * 2654435761u) >> 13) & 0xFF, f);
    fclose(f);
  }
  EXPECT_STATUS(distro_history_open(NULL, copy), DISTRO_ERR_INVALID_ARGUMENT, "out is NULL");
  EXPECT_STATUS(distro_history_open(&h, NULL), DISTRO_ERR_INVALID_ARGUMENT, "path is NULL");
  EXPECT_STATUS(distro_history_open(&h, "no/such/ledger.sqlite"), DISTRO_ERR_NOT_FOUND, "no such file");
  EXPECT_STATUS(distro_history_open(&h, junk), DISTRO_ERR_CORRUPT, "not a SQLite database");
  EXPECT(h == NULL);

  EXPECT(distro_history_open(&h, copy) == DISTRO_OK);
  EXPECT(distro_history_last_round(&last, h) == DISTRO_OK && last == 3);
  /* Nothing queried yet: no entries. */
  EXPECT_STATUS(distro_history_get_totals(&t, h, 0), DISTRO_ERR_NOT_FOUND, "holds 0 entries");
  EXPECT(distro_history_query_totals(&n, h) == DISTRO_OK && n == 3);
  EXPECT(distro_history_get_totals(&t, h, 0) == DISTRO_OK);
  EXPECT(strcmp(t.node, "alice") == 0 && t.rounds == 3 && t.tokens == 4096 && t.rejected == 0);
  EXPECT(t.bytes_up == 980 && t.bytes_down == 3006);
  EXPECT(t.first_ms == 1700000001000LL && t.last_ms == 1700000003000LL);
  EXPECT(distro_history_get_totals(&t, h, 2) == DISTRO_OK);
  EXPECT(strcmp(t.node, "carol") == 0 && t.rounds == 0 && t.rejected == 1 && t.tokens == 0 && t.bytes_up == 40);
  EXPECT_STATUS(distro_history_get_totals(&t, h, 3), DISTRO_ERR_NOT_FOUND, "out of range");
  t.struct_size = 8;
  EXPECT_STATUS(distro_history_get_totals(&t, h, 0), DISTRO_ERR_SIZE, "struct_size is 8");

  /* One node's contributions, newest first. */
  EXPECT(distro_history_query_contributions(&n, h, "bob", 0) == DISTRO_OK && n == 3);
  for (i = 0; i < n; ++i) {
    EXPECT(distro_history_get_contribution(&c, h, i) == DISTRO_OK);
    EXPECT(strcmp(c.node, "bob") == 0 && c.step == 3 - i && c.accepted == 1 && c.reason[0] == '\0');
  }
  EXPECT(c.bytes_up == 310 && c.bytes_down == 1001 && c.tokens == 1024 && c.unix_ms == 1700000001000LL);
  EXPECT(distro_history_query_contributions(&n, h, "carol", 0) == DISTRO_OK && n == 1);
  EXPECT(distro_history_get_contribution(&c, h, 0) == DISTRO_OK);
  EXPECT(c.step == 2 && c.accepted == 0 && strcmp(c.reason, "wrong step") == 0 && c.tokens == 512);
  /* Every node's, limited. */
  EXPECT(distro_history_query_contributions(&n, h, NULL, 2) == DISTRO_OK && n == 2);
  EXPECT(distro_history_get_contribution(&c, h, 1) == DISTRO_OK && c.step == 3 && strcmp(c.node, "bob") == 0);
  EXPECT(distro_history_query_contributions(&n, h, "", 0) == DISTRO_OK && n == 7);
  EXPECT(distro_history_query_contributions(&n, h, "nobody", 0) == DISTRO_OK && n == 0);
  EXPECT_STATUS(distro_history_get_contribution(&c, h, 0), DISTRO_ERR_NOT_FOUND, "holds 0 entries");
  c.struct_size = 8;
  EXPECT_STATUS(distro_history_get_contribution(&c, h, 0), DISTRO_ERR_SIZE, "struct_size is 8");
  EXPECT_STATUS(distro_history_query_totals(NULL, h), DISTRO_ERR_INVALID_ARGUMENT, "out_count is NULL");

  EXPECT(distro_history_destroy(h) == DISTRO_OK);
  EXPECT_STATUS(distro_history_destroy(h), DISTRO_ERR_INVALID_ARGUMENT, "not live");
  EXPECT_STATUS(distro_history_last_round(&last, h), DISTRO_ERR_INVALID_ARGUMENT, "not live");
  EXPECT_STATUS(distro_history_last_round(&last, NULL), DISTRO_ERR_INVALID_ARGUMENT, "history is NULL");
  EXPECT(distro_history_destroy(NULL) == DISTRO_OK);
  remove(copy);
  remove("distro_capi_history.sqlite-wal");
  remove("distro_capi_history.sqlite-shm");
  remove(junk);
}

int main(void) {
  versions();
  devices();
  misuse();
  round_trip();
  history();
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
