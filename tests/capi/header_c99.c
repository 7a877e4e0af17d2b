/* Compiles the public header on its own as C99 with -pedantic -Werror. */
#include <distro/distro.h>

int distro_header_c99_probe(void);
int distro_header_c99_probe(void) {
  distro_optimizer_options o = DISTRO_OPTIMIZER_OPTIONS_INIT;
  distro_device_info d = DISTRO_DEVICE_INFO_INIT;
  distro_message_info m = DISTRO_MESSAGE_INFO_INIT;
  distro_optimizer_stats s = DISTRO_OPTIMIZER_STATS_INIT;
  return (int)(o.struct_size + d.struct_size + m.struct_size + s.struct_size);
}
