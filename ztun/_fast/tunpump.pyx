"""TunPump: a native thread that reads the TUN, runs the NAT and writes back what it can, compiled.

On the loop's path (SystemStack.on_readable) every readable TUN wakes the Python loop: both
ways of every round trip, every packet of a connection's set-up and teardown. With the pump,
a packet of an established flow goes TUN -> parse -> NAT rewrite -> TUN on this thread and
the loop is not woken for it. A batch that holds anything else (a new flow's SYN, UDP, ICMP,
other protocols, a packet of no flow, a write that failed) is handed to the loop whole, through
a pipe: the loop does with its rare slots what it does on its own path (SystemStack._rare) and
gives the batch back through a second pipe. Slots the pump wrote are marked V_DROP with reason
0 in the batch it hands over: nothing is left to do with them.

The NAT table is shared: its lock (nat.pxd) is held while a batch is processed here and by
each of its Python methods. This thread never takes the GIL.

Linux TUN fds (read() and write(), with the virtio_net_hdr in front when vnet_hdr); the
macOS utun and Windows Wintun devices keep the loop's path, as do ZTUN_NO_EXTENSIONS=1 and
ZTUN_TUN_PUMP=0.
"""
from libc.errno cimport EINTR, errno
from libc.stdint cimport int32_t, uint8_t, uint64_t
from posix.unistd cimport close, pipe, read, write

import numpy as np

from ..errors import PacketError, TunError

from core cimport *
from system cimport POLLIN, ZT_WOULD_BLOCK, poll, pollfd
from ztun._fast.nat cimport NatTable
from ztun._fast.packet cimport check_vnet, parse_one


cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    int pthread_create(pthread_t *t, const void *attr, void *(*start)(void *) noexcept nogil, void *arg)
    int pthread_join(pthread_t t, void **ret)

cdef extern from "<time.h>" nogil:
    ctypedef int clockid_t
    struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(clockid_t clk, timespec *ts)
    int CLOCK_MONOTONIC

cdef extern from *:
    """
    #include <fcntl.h>
    #include <pthread.h>
    #include <sys/eventfd.h>
    static int zt_pump_nonblock(int fd) {
        int fl = fcntl(fd, F_GETFL);
        return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    }
    static int zt_pump_cloexec(int fd) { return fcntl(fd, F_SETFD, FD_CLOEXEC); }
    static double zt_pump_thread_cpu(pthread_t t) {
        clockid_t c;
        struct timespec ts;
        if (pthread_getcpuclockid(t, &c) != 0 || clock_gettime(c, &ts) != 0)
            return -1.0;
        return ts.tv_sec + ts.tv_nsec * 1e-9;
    }
    """
    int zt_pump_nonblock(int fd) nogil
    int zt_pump_cloexec(int fd) nogil
    double zt_pump_thread_cpu(pthread_t t) nogil
    int eventfd(unsigned int initval, int flags) nogil
    int EFD_NONBLOCK
    int EFD_CLOEXEC


cdef enum:
    MAX_BATCHES = 8  # batches the pump owns: one it reads into, the rest may be with the loop
    READS_PER_WAKE = 16  # batches read before the pump polls again (the stop fd gets its turn)
    FAILED = 255  # the byte on the ready pipe that says the device failed (TunPump.error)


cdef struct Rows:
    uint8_t *data  # slot i's packet at data + i * stride + HEADROOM
    Py_ssize_t stride
    Py_ssize_t slots
    int *lengths
    Meta *meta
    uint8_t *verdicts
    uint8_t *reasons
    int32_t *flow_ids
    int32_t *errnos
    Py_ssize_t count


cdef double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)  # time.monotonic()'s clock
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef void *_main(void *arg) noexcept nogil:
    (<TunPump>arg)._run()
    return NULL


cdef class TunPump:
    """TunPump(fd, nat, batches, hdr=0)
--

A thread that pumps the TUN fd through the NAT table, handing the loop only batches it must see.

batches: PacketBatch objects (2..8), each the shape the stack reads into; hdr: bytes of
virtio_net_hdr in front of each packet on fd (0 or 10, as the batches' vnet_hdr says)."""

    cdef NatTable nat
    cdef readonly list batches
    cdef list errnos
    cdef Rows rows[MAX_BATCHES]
    cdef int n_batches
    cdef int fd, hdr
    cdef bint vnet
    cdef int ready_r, ready_w, free_r, free_w, stop_fd
    cdef pthread_t thread
    cdef bint started, joined
    cdef int free_ids[MAX_BATCHES]  # batches the thread holds, a stack
    cdef int n_free
    cdef readonly int error  # errno of the read that stopped the pump (it handed over FAILED)
    cdef uint64_t c_packets, c_reads, c_written, c_handed, c_waits

    def __cinit__(self):
        self.ready_r = self.ready_w = self.free_r = self.free_w = self.stop_fd = -1

    def __init__(self, int fd, NatTable nat not None, batches, int hdr=0):
        cdef int p[2]
        cdef uint8_t[:, ::1] data
        cdef int[::1] lengths
        cdef uint8_t[::1] verdicts, reasons
        cdef int32_t[::1] flow_ids, errs
        cdef Rows *r
        batches = list(batches)
        if not 2 <= len(batches) <= MAX_BATCHES:
            raise ValueError(f"a pump takes 2..{MAX_BATCHES} batches, got {len(batches)}")
        if hdr not in (0, VNET_HDR_LEN):
            raise PacketError(f"hdr must be 0 or {VNET_HDR_LEN}, got {hdr}")
        self.fd, self.nat, self.hdr, self.vnet = fd, nat, hdr, hdr == VNET_HDR_LEN
        self.batches, self.errnos = batches, []
        self.n_batches = len(batches)
        for i, batch in enumerate(batches):
            if bool(batch.vnet_hdr) != self.vnet:
                raise PacketError("every batch's vnet_hdr must match hdr")
            data, lengths = batch.data, batch.lengths
            verdicts, reasons, flow_ids = batch.verdicts, batch.reasons, batch.flow_ids
            e = np.zeros(batch.slots, dtype=np.int32)
            self.errnos.append(e)
            errs = e
            r = &self.rows[i]
            r.data, r.stride, r.slots = &data[0, 0], data.shape[1], data.shape[0]
            r.lengths, r.meta = &lengths[0], meta_of(batch)
            r.verdicts, r.reasons, r.flow_ids, r.errnos = &verdicts[0], &reasons[0], &flow_ids[0], &errs[0]
            r.count = 0
            self.free_ids[i] = i
        self.n_free = self.n_batches
        for which in range(2):
            if pipe(p) != 0:
                self._close_fds()
                raise OSError(errno, "pipe for the TUN pump")
            for k in range(2):
                zt_pump_nonblock(p[k])
                zt_pump_cloexec(p[k])
            if which == 0:
                self.ready_r, self.ready_w = p[0], p[1]
            else:
                self.free_r, self.free_w = p[0], p[1]
        self.stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.stop_fd < 0:
            self._close_fds()
            raise OSError(errno, "eventfd for the TUN pump")

    def fileno(self):
        """The fd the loop waits on: readable when a batch (or the device's failure) was handed over."""
        return self.ready_r

    def start(self):
        if self.started:
            raise RuntimeError("the TUN pump was started already")
        if self.stop_fd < 0:
            raise RuntimeError("the TUN pump is closed")
        if pthread_create(&self.thread, NULL, _main, <void *>self) != 0:
            raise OSError("cannot start the TUN pump's thread")
        self.started = True

    def stop(self):
        """Stop the thread and wait for it; close the pipes. Idempotent. Batches it handed over stay valid."""
        cdef uint64_t one = 1
        if self.started and not self.joined:
            write(self.stop_fd, &one, 8)
            with nogil:
                pthread_join(self.thread, NULL)
            self.joined = True
        self._close_fds()

    def __dealloc__(self):
        cdef uint64_t one = 1
        if self.started and not self.joined:
            write(self.stop_fd, &one, 8)
            with nogil:
                pthread_join(self.thread, NULL)
        self._close_fds()

    cdef void _close_fds(self) noexcept:
        for fd in (self.ready_r, self.ready_w, self.free_r, self.free_w, self.stop_fd):
            if fd >= 0:
                close(fd)
        self.ready_r = self.ready_w = self.free_r = self.free_w = self.stop_fd = -1

    def take(self):
        """[(batch index, count)] handed over since the last call; TunError once the device failed."""
        cdef uint8_t buf[64]
        cdef ssize_t n
        out = []
        if self.ready_r < 0:
            return out
        while True:
            n = read(self.ready_r, buf, sizeof(buf))
            if n <= 0:
                break
            for k in range(n):
                if buf[k] == FAILED:
                    raise TunError(f"read from fd {self.fd}", self.error)
                out.append((buf[k], self.rows[buf[k]].count))
        return out

    def give(self, int index):
        """Give batch index back to the pump (the loop is done with it)."""
        cdef uint8_t b = <uint8_t>index
        if not 0 <= index < self.n_batches:
            raise ValueError(f"no batch {index}")
        if self.free_w >= 0:
            write(self.free_w, &b, 1)

    def errnos_of(self, int index):
        """Per slot of batch index: the errno of the pump's write of it, 0 if written or not its to write."""
        return self.errnos[index]

    def cpu_time(self):
        """The thread's CPU time in seconds (0.0 before it started)."""
        if not self.started or self.joined:
            return 0.0
        return max(zt_pump_thread_cpu(self.thread), 0.0)

    def counters(self):
        return {"packets_read": self.c_packets, "batches_read": self.c_reads, "written": self.c_written,
                "handed_over": self.c_handed, "waited_for_batch": self.c_waits}

    # -- the thread -------------------------------------------------------------

    cdef void _run(self) noexcept nogil:
        cdef pollfd fds[2]
        cdef uint64_t value
        cdef int k, b, err
        cdef Py_ssize_t n
        fds[1].fd = self.stop_fd
        fds[1].events = POLLIN
        while True:
            if self.n_free == 0:  # every batch is with the loop: wait for one back
                fds[0].fd = self.free_r
            else:
                fds[0].fd = self.fd
            fds[0].events = POLLIN
            fds[0].revents = fds[1].revents = 0
            if poll(fds, 2, -1) < 0:
                if errno == EINTR:
                    continue
                self._fail(errno)
                return
            if fds[1].revents:
                read(self.stop_fd, &value, 8)
                return
            if self.n_free == 0:
                self.c_waits += 1
                self._take_back()
                continue
            for k in range(READS_PER_WAKE):
                if self.n_free == 0 and self._take_back() == 0:
                    break
                b = self.free_ids[self.n_free - 1]
                n = self._read(&self.rows[b], &err)
                if n == 0:
                    if err:
                        self._fail(err)
                        return
                    break
                if self._pump(b, n):
                    self.n_free -= 1
                    self.c_handed += 1
                    self._hand(<uint8_t>b)
                if n < self.rows[b].slots:
                    break

    cdef int _take_back(self) noexcept nogil:
        """Read the batches the loop gave back; return how many."""
        cdef uint8_t buf[MAX_BATCHES]
        cdef ssize_t n = read(self.free_r, buf, MAX_BATCHES)
        cdef int k
        if n <= 0:
            return 0
        for k in range(n):
            if self.n_free < self.n_batches:
                self.free_ids[self.n_free] = buf[k]
                self.n_free += 1
        return <int>n

    cdef void _hand(self, uint8_t b) noexcept nogil:
        while write(self.ready_w, &b, 1) < 0 and errno == EINTR:
            pass

    cdef void _fail(self, int err) noexcept nogil:
        self.error = err
        self._hand(FAILED)

    cdef Py_ssize_t _read(self, Rows *r, int *err) noexcept nogil:
        """Read packets into r's slots until it is full or none is queued; return how many (*err: the errno that ended it)."""
        cdef Py_ssize_t i = 0, room = r.stride - HEADROOM
        cdef ssize_t n
        err[0] = 0
        while i < r.slots:
            n = read(self.fd, r.data + i * r.stride + HEADROOM - self.hdr, room + self.hdr)
            if n < 0:
                if errno == EINTR:
                    continue
                if not ZT_WOULD_BLOCK(errno):
                    err[0] = errno
                break
            if n == 0:
                break
            n -= self.hdr
            if n < 0:
                n = 0
            elif n > room:
                n = room
            r.lengths[i] = <int>n
            i += 1
        r.count = i
        return i

    cdef bint _pump(self, int b, Py_ssize_t n) noexcept nogil:
        """Parse, NAT and write back batch b's n packets; whether the loop must see the batch."""
        cdef Rows *r = &self.rows[b]
        cdef Py_ssize_t i, rare, no_flow, failed = 0, length
        cdef uint8_t *p
        cdef ssize_t w
        self.c_packets += n
        self.c_reads += 1
        for i in range(n):
            p = r.data + i * r.stride + HEADROOM
            length = r.lengths[i]
            if parse_one(p, length, &r.meta[i]) == OK and self.vnet:
                check_vnet(p - VNET_HDR_LEN, &r.meta[i])
        rare = self.nat.process_rows(r.data, r.stride, r.meta, r.verdicts, r.reasons, r.flow_ids, n, _now(), &no_flow)
        for i in range(n):
            r.errnos[i] = 0
            if r.verdicts[i] != V_WRITE:
                continue
            r.verdicts[i] = V_DROP  # done here: nothing for the loop to do with it
            p = r.data + i * r.stride + HEADROOM - self.hdr
            while True:
                w = write(self.fd, p, r.lengths[i] + self.hdr)
                if w >= 0 or errno != EINTR:
                    break
            if w < 0:
                r.errnos[i] = errno
                failed += 1
            else:
                self.c_written += 1
        return rare > 0 or no_flow > 0 or failed > 0
