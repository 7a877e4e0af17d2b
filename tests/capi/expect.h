/* The check macros of the C API tests (C99). Each test file keeps its own counters: a file that
 * includes this defines `static int passed, failed;` first. */
#ifndef DISTRO_TEST_EXPECT_H
#define DISTRO_TEST_EXPECT_H

#include <distro/distro.h>
#include <stdio.h>
#include <string.h>

#define EXPECT(cond)                                                             \
  do {                                                                           \
    if (cond) {                                                                  \
      ++passed;                                                                  \
    } else {                                                                     \
      ++failed;                                                                  \
      fprintf(stderr, "%s:%d: FAILED: %s (last error: %s)\n", __FILE__, __LINE__, \
              #cond, distro_last_error());                                       \
    }                                                                            \
  } while (0)

/* The call returns `status` and the thread's last error contains `words`. */
#define EXPECT_STATUS(call, status, words)                \
  do {                                                    \
    int rc_ = (call);                                     \
    EXPECT(rc_ == (status));                              \
    EXPECT(strstr(distro_last_error(), (words)) != NULL); \
  } while (0)

#endif
