/* What the utun batch I/O module needs from the POSIX socket API, on Linux and macOS alike.
 * The utun family header always carries Darwin's values (AF_INET 2, AF_INET6 30), whatever
 * the build host's own AF_INET6 is, so the framing can be tested over a Linux socketpair. */
#ifndef ZT_UTUN_H
#define ZT_UTUN_H

#if defined(_WIN32)
#error "utunio is POSIX-only (macOS utun, and the Linux socketpair tests): leave it out of Windows builds"
#endif

#include <errno.h>
#include <sys/types.h>
#include <sys/socket.h>

#define ZT_UTUN_HDR 4
#define ZT_UTUN_AF_INET 2   /* <sys/socket.h> AF_INET on Darwin */
#define ZT_UTUN_AF_INET6 30 /* <sys/socket.h> AF_INET6 on Darwin */

/* EAGAIN and EWOULDBLOCK are one value on Linux and macOS, two on some systems. */
#define ZT_UTUN_WOULD_BLOCK(e) ((e) == EAGAIN || (e) == EWOULDBLOCK)

#endif
