/* The Linux TUN ioctls and flags, or zeros where <linux/if_tun.h> does not exist, so the
 * batch I/O module builds on every POSIX system and only the Linux calls are gated. */
#ifndef ZT_TUN_H
#define ZT_TUN_H

#if defined(_WIN32)
#error "tunio is POSIX-only (Linux TUN fds; Windows uses Wintun's ring API): leave it out of Windows builds"
#endif

#include <errno.h>
#include <net/if.h>
#include <sys/ioctl.h>

/* EAGAIN and EWOULDBLOCK are one value on Linux, two on some systems. */
#define ZT_WOULD_BLOCK(e) ((e) == EAGAIN || (e) == EWOULDBLOCK)

#if defined(__linux__)
#include <linux/if_tun.h>
#define ZT_HAVE_LINUX_TUN 1
#else
#define ZT_HAVE_LINUX_TUN 0
#define TUNSETIFF 0
#define TUNGETIFF 0
#define TUNSETPERSIST 0
#define TUNSETOFFLOAD 0
#define TUNSETVNETHDRSZ 0
#define TUNGETFEATURES 0
#define IFF_TUN 0
#define IFF_NO_PI 0
#define IFF_MULTI_QUEUE 0
#define IFF_VNET_HDR 0
#define IFF_TUN_EXCL 0
#define IFF_PERSIST 0
#endif

#endif
