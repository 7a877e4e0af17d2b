/* The network part of the C API from C99: a coordinator on 127.0.0.1 (port 0) runs a tiny nano run
 * (3 rounds, 2 nodes) with two nodes in this process, plus a node with a wrong token, all through
 * distro.h. Checks the events, the statuses (steps, equal hashes), the live controls and the error
 * paths. Prints "N passed, N failed" and exits non-zero on any failure. */
#define _POSIX_C_SOURCE 200809L
#include <distro/distro.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int passed, failed;

#include "expect.h"

enum { ROUNDS = 3 };

/* What one handle's callback saw. Written on the library's io thread, read here after wait. */
typedef struct seen {
  pthread_mutex_t mu;
  int counts[8];         /* by distro_net_event_kind */
  uint64_t last_step;    /* of the last STEP_DONE */
  char last_error[256];  /* message of the last ERROR */
  int self_destroy_rc;   /* what destroy/wait answered from inside the callback (-1 = not tried) */
  int self_wait_rc;
  distro_node *node;     /* the handle this callback belongs to, for the self-call checks */
} seen;

static void seen_init(seen *s) {
  memset(s, 0, sizeof *s);
  pthread_mutex_init(&s->mu, NULL);
  s->self_destroy_rc = -1;
  s->self_wait_rc = -1;
}

static void on_event(const distro_net_event *e, void *user) {
  seen *s = (seen *)user;
  pthread_mutex_lock(&s->mu);
  if (e->kind >= 1 && e->kind <= 6) s->counts[e->kind]++;
  if (e->kind == DISTRO_NET_EVENT_STEP_DONE) s->last_step = e->step;
  if (e->kind == DISTRO_NET_EVENT_ERROR) {
    strncpy(s->last_error, e->message, sizeof s->last_error - 1);
  }
  if (e->kind == DISTRO_NET_EVENT_STEP_DONE && s->node && s->self_destroy_rc == -1) {
    int done = 0;
    /* Both would join the thread we run on: refused, and the run goes on. */
    s->self_destroy_rc = distro_node_destroy(s->node);
    s->self_wait_rc = distro_node_wait(&done, s->node, 10);
  }
  pthread_mutex_unlock(&s->mu);
}

static int count_of(seen *s, int kind) {
  int n;
  pthread_mutex_lock(&s->mu);
  n = s->counts[kind];
  pthread_mutex_unlock(&s->mu);
  return n;
}

static void misuse(void) {
  distro_coordinator *c = NULL;
  distro_node *n = NULL;
  distro_coordinator_options co = DISTRO_COORDINATOR_OPTIONS_INIT;
  distro_node_options no = DISTRO_NODE_OPTIONS_INIT;
  distro_node_status ns = DISTRO_NODE_STATUS_INIT;
  uint16_t port = 0;
  int done = 0;

  EXPECT_STATUS(distro_coordinator_create(&c, NULL), DISTRO_ERR_INVALID_ARGUMENT, "options is NULL");
  EXPECT_STATUS(distro_coordinator_create(&c, &co), DISTRO_ERR_INVALID_ARGUMENT, "exactly one of");
  co.struct_size = 8;
  EXPECT_STATUS(distro_coordinator_create(&c, &co), DISTRO_ERR_SIZE, "struct_size is 8");
  co = (distro_coordinator_options)DISTRO_COORDINATOR_OPTIONS_INIT;
  co.config_path = "/nonexistent/run.json";
  EXPECT_STATUS(distro_coordinator_create(&c, &co), DISTRO_ERR_NOT_FOUND, "/nonexistent/run.json");
  co.config_path = NULL;
  co.config_json = "{\"data\": \"x.txt\", \"batch\": -1, \"tokens\": {}}";
  EXPECT_STATUS(distro_coordinator_create(&c, &co), DISTRO_ERR_INVALID_ARGUMENT, "'batch'");
  EXPECT(c == NULL);

  EXPECT_STATUS(distro_node_create(&n, NULL), DISTRO_ERR_INVALID_ARGUMENT, "options is NULL");
  EXPECT_STATUS(distro_node_create(&n, &no), DISTRO_ERR_INVALID_ARGUMENT, "options.coordinator is NULL");
  no.coordinator = "127.0.0.1:0";
  no.token = "0123456789abcdef";
  EXPECT_STATUS(distro_node_create(&n, &no), DISTRO_ERR_INVALID_ARGUMENT, "port 0");
  no.coordinator = "127.0.0.1:9";
  no.pin = "sha256:nothex";
  EXPECT_STATUS(distro_node_create(&n, &no), DISTRO_ERR_INVALID_ARGUMENT, "pin");
  no.pin = NULL;
  no.retry_min_s = 0;
  EXPECT_STATUS(distro_node_create(&n, &no), DISTRO_ERR_INVALID_ARGUMENT, "reconnect");
  no.retry_min_s = 0.5;
  EXPECT(n == NULL);

  /* A node that is never started: controls answer STATE, stop and wait are fine, then destroy. */
  EXPECT(distro_node_create(&n, &no) == DISTRO_OK);
  EXPECT_STATUS(distro_node_pause(n), DISTRO_ERR_STATE, "not started");
  EXPECT_STATUS(distro_node_set_limits(n, 1000, 1000), DISTRO_ERR_STATE, "not started");
  EXPECT_STATUS(distro_node_set_limits(n, -1, 0), DISTRO_ERR_INVALID_ARGUMENT, "rate limits");
  EXPECT(distro_node_get_status(&ns, n) == DISTRO_OK && ns.state == DISTRO_NET_CREATED);
  EXPECT(strcmp(ns.state_name, "created") == 0);
  ns.struct_size = 16;
  EXPECT_STATUS(distro_node_get_status(&ns, n), DISTRO_ERR_SIZE, "struct_size is 16");
  ns.struct_size = sizeof ns;
  EXPECT(distro_node_stop(n) == DISTRO_OK);
  EXPECT(distro_node_wait(&done, n, 0) == DISTRO_OK && done == 1);
  EXPECT_STATUS(distro_node_wait(NULL, n, 0), DISTRO_ERR_INVALID_ARGUMENT, "out_done is NULL");
  EXPECT(distro_node_destroy(n) == DISTRO_OK);
  /* The destroyed handle is answered, not used. */
  EXPECT_STATUS(distro_node_get_status(&ns, n), DISTRO_ERR_INVALID_ARGUMENT, "not live");
  EXPECT_STATUS(distro_node_start(n), DISTRO_ERR_INVALID_ARGUMENT, "not live");
  EXPECT_STATUS(distro_node_destroy(n), DISTRO_ERR_INVALID_ARGUMENT, "not live");
  EXPECT(distro_node_destroy(NULL) == DISTRO_OK && distro_coordinator_destroy(NULL) == DISTRO_OK);
  EXPECT_STATUS(distro_coordinator_port(&port, NULL), DISTRO_ERR_INVALID_ARGUMENT, "coordinator is NULL");
}

static int write_config(const char *dir, const char *path) {
  FILE *f = fopen(path, "w");
  if (!f) return 0;
  fprintf(f,
          "{\"preset\": \"nano\", \"data\": \"%s/genesis.txt\", \"steps\": %d, \"batch\": 2, \"seq\": 32,\n"
          " \"seed\": 7, \"nodes_per_round\": 2, \"min_nodes\": 2, \"fill_wait_s\": 5, \"round_deadline_s\": 30,\n"
          " \"listen\": \"127.0.0.1:7\", \"state_dir\": \"%s/state\",\n"
          " \"tokens\": {\"alpha\": \"alpha-token-0123456789\", \"beta\": \"beta-token-0123456789\"}}\n",
          DISTRO_TEST_DATA, ROUNDS, dir);
  return fclose(f) == 0;
}

/* Waits for a handle to end, at most `seconds`, in slices (as a host's UI loop would). */
static int wait_node(distro_node *n, int seconds) {
  int done = 0, i;
  for (i = 0; i < seconds * 10 && !done; ++i)
    if (distro_node_wait(&done, n, 100) != DISTRO_OK) return 0;
  return done;
}

static void run(void) {
  char dir[] = "/tmp/distro-capinet-XXXXXX", path[512], fp[DISTRO_FINGERPRINT_SIZE], addr[64];
  distro_coordinator *c = NULL;
  distro_node *nodes[3] = {NULL, NULL, NULL};
  seen cs, ns[3];
  distro_coordinator_options co = DISTRO_COORDINATOR_OPTIONS_INIT;
  distro_coordinator_status st = DISTRO_COORDINATOR_STATUS_INIT;
  distro_node_status nst[3];
  const char *tokens[3] = {"alpha-token-0123456789", "beta-token-0123456789", "wrong-token-0123456789"};
  uint16_t port = 0;
  int done = 0, i;

  if (!mkdtemp(dir)) {
    EXPECT(!"mkdtemp failed");
    return;
  }
  snprintf(path, sizeof path, "%s/run.json", dir);
  EXPECT(write_config(dir, path));
  co.config_path = path;
  co.listen = "127.0.0.1:0"; /* overrides the file's port 7 */
  EXPECT(distro_coordinator_create(&c, &co) == DISTRO_OK);
  if (!c) return;
  seen_init(&cs);
  EXPECT(distro_coordinator_set_event_callback(c, on_event, &cs) == DISTRO_OK);
  EXPECT_STATUS(distro_coordinator_port(&port, c), DISTRO_ERR_STATE, "not started");
  EXPECT_STATUS(distro_coordinator_fingerprint(fp, 10, c), DISTRO_ERR_SIZE, "DISTRO_FINGERPRINT_SIZE");
  EXPECT(distro_coordinator_fingerprint(fp, sizeof fp, c) == DISTRO_OK);
  EXPECT(strncmp(fp, "sha256:", 7) == 0 && strlen(fp) == 71);
  EXPECT(distro_coordinator_start(c) == DISTRO_OK);
  EXPECT_STATUS(distro_coordinator_start(c), DISTRO_ERR_STATE, "started already");
  EXPECT_STATUS(distro_coordinator_set_event_callback(c, NULL, NULL), DISTRO_ERR_STATE, "before");
  EXPECT(distro_coordinator_port(&port, c) == DISTRO_OK && port != 0 && port != 7);
  /* Live limits: generous, so they do not slow the run; a bad value is refused. */
  EXPECT(distro_coordinator_set_limits(c, 1e9, 1e9) == DISTRO_OK);
  EXPECT_STATUS(distro_coordinator_set_limits(c, 0, -5), DISTRO_ERR_INVALID_ARGUMENT, "rate limits");
  snprintf(addr, sizeof addr, "127.0.0.1:%u", (unsigned)port);

  for (i = 0; i < 3; ++i) {
    distro_node_options no = DISTRO_NODE_OPTIONS_INIT;
    no.coordinator = addr;
    no.token = tokens[i];
    no.pin = i == 0 ? fp : NULL; /* the first node pins the certificate */
    no.threads = 1;
    no.retry_min_s = 0.2;
    no.retry_max_s = 1.0;
    seen_init(&ns[i]);
    EXPECT(distro_node_create(&nodes[i], &no) == DISTRO_OK);
    if (!nodes[i]) return;
    if (i == 1) ns[i].node = nodes[i]; /* this one tries destroy and wait from its callback */
    EXPECT(distro_node_set_event_callback(nodes[i], on_event, &ns[i]) == DISTRO_OK);
    EXPECT(distro_node_start(nodes[i]) == DISTRO_OK);
  }
  EXPECT(distro_node_set_limits(nodes[0], 1e9, 1e9) == DISTRO_OK);
  /* Pause and resume while it runs: both are accepted, and the run still completes. */
  EXPECT(distro_node_pause(nodes[1]) == DISTRO_OK);
  EXPECT(distro_node_resume(nodes[1]) == DISTRO_OK);

  for (i = 0; i < 3; ++i) EXPECT(wait_node(nodes[i], 60));
  for (i = 0; i < 600 && !done; ++i) EXPECT(distro_coordinator_wait(&done, c, 100) == DISTRO_OK);
  EXPECT(done == 1);

  EXPECT(distro_coordinator_get_status(&st, c) == DISTRO_OK);
  EXPECT(st.state == DISTRO_NET_COMPLETE && strcmp(st.state_name, "complete") == 0);
  EXPECT(st.step == ROUNDS && st.total_steps == ROUNDS && st.param_hash != 0);
  EXPECT(st.bytes_up > 0 && st.bytes_down > 0);
  for (i = 0; i < 3; ++i) {
    nst[i] = (distro_node_status)DISTRO_NODE_STATUS_INIT;
    EXPECT(distro_node_get_status(&nst[i], nodes[i]) == DISTRO_OK);
  }
  for (i = 0; i < 2; ++i) {
    EXPECT(nst[i].state == DISTRO_NET_COMPLETE);
    EXPECT(nst[i].step == ROUNDS && nst[i].total_steps == ROUNDS);
    EXPECT(nst[i].param_hash == st.param_hash);
    EXPECT(nst[i].rounds_trained >= 1 && nst[i].bytes_up > 0 && nst[i].bytes_down > 0);
    EXPECT(strcmp(nst[i].coordinator_fingerprint, fp) == 0);
    EXPECT(nst[i].error[0] == '\0');
    EXPECT(count_of(&ns[i], DISTRO_NET_EVENT_STEP_DONE) == ROUNDS && ns[i].last_step == ROUNDS);
    EXPECT(count_of(&ns[i], DISTRO_NET_EVENT_JOINED) >= 1);
  }
  EXPECT(strcmp(nst[0].node_name, "alpha") == 0 && strcmp(nst[1].node_name, "beta") == 0);
  EXPECT(count_of(&cs, DISTRO_NET_EVENT_STEP_DONE) == ROUNDS && cs.last_step == ROUNDS);
  EXPECT(count_of(&cs, DISTRO_NET_EVENT_JOINED) >= 2);
  /* The wrong token: refused by the coordinator, reported by the node as an error and a failed state. */
  EXPECT(nst[2].state == DISTRO_NET_FAILED && strcmp(nst[2].state_name, "failed") == 0);
  EXPECT(strstr(nst[2].error, "token") != NULL);
  EXPECT(count_of(&ns[2], DISTRO_NET_EVENT_ERROR) >= 1 && strstr(ns[2].last_error, "token") != NULL);
  EXPECT(count_of(&ns[2], DISTRO_NET_EVENT_STEP_DONE) == 0 && nst[2].step == 0);
  EXPECT(count_of(&cs, DISTRO_NET_EVENT_ERROR) >= 1);
  /* destroy and wait from a handle's own callback were refused. */
  EXPECT(ns[1].self_destroy_rc == DISTRO_ERR_STATE && ns[1].self_wait_rc == DISTRO_ERR_STATE);

  for (i = 0; i < 3; ++i) EXPECT(distro_node_destroy(nodes[i]) == DISTRO_OK);
  EXPECT_STATUS(distro_node_get_status(&nst[0], nodes[0]), DISTRO_ERR_INVALID_ARGUMENT, "not live");
  EXPECT(distro_coordinator_destroy(c) == DISTRO_OK);
  EXPECT_STATUS(distro_coordinator_get_status(&st, c), DISTRO_ERR_INVALID_ARGUMENT, "not live");
  EXPECT_STATUS(distro_coordinator_destroy(c), DISTRO_ERR_INVALID_ARGUMENT, "not live");
  snprintf(path, sizeof path, "rm -rf '%s'", dir);
  EXPECT(system(path) == 0);
}

int main(void) {
  misuse();
  run();
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
