"""The loop's poller on Windows: WSAPoll over a ctypes array, past select()'s 512 sockets.

CPython's select() on Windows (which `selectors` uses there) is built with FD_SETSIZE 512, so
a few hundred relayed connections (two sockets each) overflow it. WSAPoll takes any number
of sockets and has the poll() shape the loop already speaks; IOCP would scale further but
needs completion-based I/O throughout (every recv and send posted), which the readiness
loop, the relay and the UDP table are not. The array is kept between calls and changed in
place (an fd's slot is found in a dict; an unregistered slot is filled with the last one).

WSAPoll before Windows 10 2004 did not report a failed connect; ztun's connects have their
own timeout (ztun.outbound.direct.Connecting), so there it is reported late, not lost.
"""

import ctypes
import errno
import sys

# Interest and readiness bits, epoll's values, as the loop reads them.
IN, OUT, ERR = 0x001, 0x004, 0x008
# <winsock2.h>
POLLRDNORM, POLLRDBAND, POLLWRNORM = 0x0100, 0x0200, 0x0010
POLLERR, POLLHUP, POLLNVAL = 0x0001, 0x0002, 0x0004
SOCKET_ERROR = -1


class WSAPOLLFD(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_size_t), ("events", ctypes.c_short), ("revents", ctypes.c_short)]  # SOCKET is UINT_PTR


def _winsock_poll():
    """ws2_32's WSAPoll, typed; and a function giving the last error (WSAGetLastError)."""
    ws2 = ctypes.WinDLL("ws2_32")
    fn = ws2.WSAPoll
    fn.argtypes = (ctypes.POINTER(WSAPOLLFD), ctypes.c_ulong, ctypes.c_int)
    fn.restype = ctypes.c_int
    last = ws2.WSAGetLastError
    last.restype = ctypes.c_int
    return fn, last


def interest(mask: int) -> int:
    """WSAPoll events for the loop's IN/OUT interest (only POLLRDNORM and POLLWRNORM: other bits are refused)."""
    return (POLLRDNORM if mask & IN else 0) | (POLLWRNORM if mask & OUT else 0)


def readiness(revents: int) -> int:
    """The loop's IN/OUT/ERR bits for WSAPoll's revents (a hang-up is readable: recv returns the end)."""
    ev = IN if revents & (POLLRDNORM | POLLRDBAND | POLLHUP) else 0
    if revents & POLLWRNORM:
        ev |= OUT
    if revents & (POLLERR | POLLNVAL):
        ev |= ERR
    return ev


class WSAPollPoller:
    """The epoll-shaped interface (register, modify, unregister, poll, close) over WSAPoll.

    poll_fn(array, count, timeout_ms) -> int and last_error() are WSAPoll and
    WSAGetLastError; tests pass stand-ins to run the bookkeeping anywhere.
    """

    def __init__(self, poll_fn=None, last_error=None, capacity: int = 64):
        if poll_fn is None:
            if sys.platform != "win32":
                raise OSError(errno.ENOSYS, "WSAPoll is Windows'")
            poll_fn, last_error = _winsock_poll()
        self._poll, self._last_error = poll_fn, last_error or (lambda: 0)
        self._array = (WSAPOLLFD * capacity)()
        self._slot: dict = {}  # fd -> index in the array
        self._closed = False

    def __len__(self):
        return len(self._slot)

    def register(self, fd: int, mask: int) -> None:
        if fd in self._slot:
            raise FileExistsError(errno.EEXIST, f"fd {fd} is registered already")
        n = len(self._slot)
        if n == len(self._array):
            bigger = (WSAPOLLFD * (2 * n))()
            ctypes.memmove(bigger, self._array, ctypes.sizeof(self._array))
            self._array = bigger
        entry = self._array[n]
        entry.fd, entry.events, entry.revents = fd, interest(mask), 0
        self._slot[fd] = n

    def modify(self, fd: int, mask: int) -> None:
        i = self._slot.get(fd)
        if i is None:
            raise FileNotFoundError(errno.ENOENT, "not registered")
        self._array[i].events = interest(mask)

    def unregister(self, fd: int) -> None:
        i = self._slot.pop(fd, None)
        if i is None:
            return
        last = len(self._slot)  # the old last index
        if i != last:
            moved = self._array[last]
            self._array[i].fd, self._array[i].events, self._array[i].revents = moved.fd, moved.events, 0
            self._slot[moved.fd] = i

    def poll(self, timeout=-1, maxevents=-1) -> list:
        """[(fd, IN|OUT|ERR bits)] of the ready sockets; waits up to timeout seconds (negative/None: forever)."""
        n = len(self._slot)
        ms = -1 if timeout is None or timeout < 0 else int(timeout * 1000 + 0.999)  # round up: never spin early
        got = self._poll(self._array, n, ms)
        if got == SOCKET_ERROR:
            code = self._last_error()
            raise OSError(errno.EINVAL, f"WSAPoll failed (WSA error {code})")
        out = []
        if got > 0:
            array = self._array
            for i in range(n):
                revents = array[i].revents
                if revents:
                    out.append((array[i].fd, readiness(revents)))
                    if maxevents > 0 and len(out) >= maxevents:
                        break
        return out

    def close(self) -> None:
        self._slot.clear()
        self._closed = True
