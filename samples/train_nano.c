/* Trains the built-in `nano` model for a few DisTrO steps with 2 local peers, through the C API
 * alone, and saves a checkpoint.
 *
 *   cc -std=c99 train_nano.c -I capi/include -L build/lib -ldistro -o train_nano
 *   ./train_nano data/kjv.txt [checkpoint-dir]
 */
#include <distro/distro.h>
#include <stdio.h>

static int check(int status, const char *what) {
  if (status != DISTRO_OK) fprintf(stderr, "%s failed: %s\n", what, distro_last_error());
  return status;
}

int main(int argc, char **argv) {
  distro_trainer_options o = DISTRO_TRAINER_OPTIONS_INIT;
  distro_trainer *t = NULL;
  distro_trainer_info info = DISTRO_TRAINER_INFO_INIT;
  distro_step_stats s = DISTRO_STEP_STATS_INIT;
  double before = 0, after = 0;
  int i, rc = 1;

  if (argc < 2) {
    fprintf(stderr, "usage: %s TEXT-FILE [CHECKPOINT-DIR]\n", argv[0]);
    return 2;
  }
  if (distro_abi_version() != DISTRO_ABI_VERSION) {
    fprintf(stderr, "libdistro ABI %d, header %d\n", distro_abi_version(), DISTRO_ABI_VERSION);
    return 1;
  }
  o.data = argv[1];
  o.preset = "nano";
  o.peers = 2;
  o.steps = 8;
  o.batch = 4;
  o.seq = 64;
  o.lr = 2e-3f;
  o.eval_batches = 2;
  if (check(distro_trainer_create(&t, &o), "distro_trainer_create")) return 1;
  if (check(distro_trainer_get_info(&info, t), "distro_trainer_get_info")) goto done;
  printf("nano: %llu parameters, %u peers\n", (unsigned long long)info.params, info.peers);
  if (check(distro_trainer_evaluate(&before, t), "distro_trainer_evaluate")) goto done;
  for (i = 0; i < 8; ++i) {
    if (check(distro_trainer_step(&s, t), "distro_trainer_step")) goto done;
    printf("step %llu: loss %.4f, up %llu B, down %llu B per peer, replicas at %016llx\n",
           (unsigned long long)s.step, s.train_loss, (unsigned long long)s.bytes_up_per_peer,
           (unsigned long long)s.bytes_down_per_peer, (unsigned long long)s.replica_hash);
  }
  if (check(distro_trainer_evaluate(&after, t), "distro_trainer_evaluate")) goto done;
  printf("validation loss %.4f -> %.4f; a bf16 all-reduce would move %llu B per peer per step\n", before, after,
         (unsigned long long)info.allreduce_bytes_per_peer);
  if (argc > 2 && check(distro_trainer_save(t, argv[2]), "distro_trainer_save")) goto done;
  rc = after < before ? 0 : 1;
done:
  distro_trainer_destroy(t);
  return rc;
}
