// librdkafka's C API, from Debian's librdkafka-dev. Built against its headers; at test time the
// process loads librdkafka 2.16 through LD_LIBRARY_PATH (see scripts/testbed.sh).
#include <librdkafka/rdkafka.h>
