// libsystemd's daemon and journal APIs, the one prctl a service's hardening needs, and glibc's malloc_trim.
#ifndef BSC_CSYSTEMD_SHIM_H
#define BSC_CSYSTEMD_SHIM_H

#include <systemd/sd-daemon.h>
#include <systemd/sd-journal.h>
#include <sys/prctl.h>
#include <malloc.h>

// prctl is variadic, which Swift cannot call: a service's process hardening (no core dumps, no ptrace by the same
// user) needs this one fixed form.
static inline int bsc_set_not_dumpable(void) { return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0); }

// glibc's malloc_trim: returns free pages of every arena to the system (Swift's Glibc module does not export it).
static inline int bsc_release_free_memory(void) { return malloc_trim(0); }

#endif
