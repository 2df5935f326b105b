// libsystemd's daemon and journal APIs. No helpers needed: everything used is a plain function.
#ifndef BSC_CSYSTEMD_SHIM_H
#define BSC_CSYSTEMD_SHIM_H

#include <systemd/sd-daemon.h>
#include <systemd/sd-journal.h>

#endif
