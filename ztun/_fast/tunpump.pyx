"""TunPump: a native thread that reads the TUN, runs the NAT and writes back what it can, compiled.

On the loop's path (SystemStack.on_readable) every readable TUN wakes the Python loop: both
ways of every round trip, every packet of a connection's set-up and teardown. With the pump,
a packet of an established flow goes TUN -> parse -> NAT rewrite -> TUN on this thread and
the loop is not woken for it. Every packet the loop must see (a new flow's SYN, UDP, ICMP,
a packet of no flow; not a malformed one, another protocol or a fragment) is copied, with its
parse row and verdict, into a hand-over batch, handed to the loop through a pipe once the pump
has read what the device had queued and the loop holds no other batch (else when the loop
gives one back, or the batch is full):
the loop does with it what it does on its own path (SystemStack._rare) and gives the batch
back through a second pipe. While the loop holds every hand-over batch the pump waits for one
at most WAIT_MS per batch it read (a burst the loop is about to take, as the device's queue
would have held it), then drops what it would hand over and counts it (a new flow's NAT entry
is forgotten, so the client's retransmitted SYN makes it anew): an overloaded loop never stops
established flows for long.

spin_us: after a wake that moved packets the pump polls the device without sleeping (poll() with
no wait, yielding the core between two looks) for up to spin_us microseconds before it blocks
again: a packet that comes within that time (the other half of a round trip) is read without the
thread being woken. Adaptive: every spin that finds nothing makes the pump skip the spin after
twice as many wakes (up to 63), a spin that finds a packet, or a sleep shorter than spin_us, ends
the back-off; with no packets the pump never spins (an idle appliance stays idle). 0: never.

pause() stops the pump reading (it has handed over what it had when pause() returns) and
resume() starts it again: the stack lets the loop read the device while most packets are
rare anyway (a storm of new connections, bulk UDP), where the loop's own batching costs less
than a thread hop per packet.

The NAT table is shared: its lock (nat.pxd) is held while a batch is processed here and by
each of its Python methods. This thread never takes the GIL.

Linux TUN fds (read() and write(), with the virtio_net_hdr in front when vnet_hdr); the
macOS utun and Windows Wintun devices keep the loop's path, as do ZTUN_NO_EXTENSIONS=1 and
ZTUN_TUN_PUMP=0.
"""
cimport cython
from libc.errno cimport EBADF, EINTR, ENODEV, errno
from libc.stdint cimport int32_t, uint8_t, uint64_t
from libc.string cimport memcpy
from posix.unistd cimport close, pipe, read, write

from ..errors import PacketError, TunError
from .spin import MAX_US as _MAX_SPIN_US

from batch_read cimport read_slots
from core cimport *
from system cimport POLLERR, POLLHUP, POLLIN, POLLNVAL, poll, pollfd
from ztun._fast.nat cimport NatTable
from ztun._fast.packet cimport parse_rows


cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    int pthread_create(pthread_t *t, const void *attr, void *(*start)(void *) noexcept nogil, void *arg)
    int pthread_join(pthread_t t, void **ret)

cdef extern from "<sched.h>" nogil:
    int sched_yield()

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
    static int zt_pump_is_nonblocking(int fd) {
        int fl = fcntl(fd, F_GETFL);
        return fl < 0 ? -1 : (fl & O_NONBLOCK) != 0;
    }
    static void zt_pump_name(void) {
    #if defined(__linux__)
        pthread_setname_np(pthread_self(), "ztun-tun-pump");
    #endif
    }
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
    int zt_pump_is_nonblocking(int fd) nogil
    double zt_pump_thread_cpu(pthread_t t) nogil
    void zt_pump_name() nogil
    int eventfd(unsigned int initval, int flags) nogil
    int EFD_NONBLOCK
    int EFD_CLOEXEC


cdef enum:
    MAX_HANDOFF = 16  # hand-over batches at most
    READS_PER_WAKE = 16  # batches read before the pump polls again (the stop fd gets its turn)
    FAILED = 255  # the byte on the ready pipe that says the device failed (TunPump.error)
    N_ERRNOS = 256  # write failures counted per errno below this (the rest under N_ERRNOS - 1)
    WAIT_MS = 10  # the longest wait for a hand-over batch, per batch read
    RESUME = 114  # "r" on the control pipe; any other byte asks for a pause, and is echoed on the ack pipe
    PAUSE_TOKENS = 100  # pause() numbers its requests 1..100 (never RESUME): it waits for its own answer
    SPIN_BACKOFF = 6  # after this many spins in a row that found nothing, it spins after every 64th wake


cdef struct Rows:
    uint8_t *data  # slot i's packet at data + i * stride + HEADROOM
    Py_ssize_t stride
    Py_ssize_t slots
    int *lengths
    Meta *meta
    uint8_t *verdicts
    uint8_t *reasons
    int32_t *flow_ids
    Py_ssize_t count


cdef double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)  # time.monotonic()'s clock
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef void *_main(void *arg) noexcept nogil:
    zt_pump_name()  # as top and ps -L show it
    (<TunPump>arg)._run()
    return NULL


# Not cleared by the garbage collector (a pump dropped running, in a cycle): its thread uses the
# table and the batches' arrays until __dealloc__ has stopped it. Signatures in CPython's
# text-signature form, which inspect.signature reads (tunpump.pyi, tests/test_fast_parity.py):
# the default form would put __init__'s in front of the docstring's, hiding it.
@cython.no_gc_clear
@cython.embedsignature.format("clinic")
cdef class TunPump:
    """TunPump(fd, nat, batch, handoff, hdr=0, spin_us=0)
--

A thread that pumps the TUN fd through the NAT table, handing the loop only the packets it must see.

batch: the PacketBatch the pump reads into (its own from start() to stop()); handoff: 2..16
PacketBatch objects of the same shape, the rare packets go to the loop in; hdr: bytes of
virtio_net_hdr in front of each packet on fd (0 or 10, as the batches' vnet_hdr says); spin_us:
0..1000, how long the pump looks for the next packet before it sleeps, after a wake that moved some."""

    cdef NatTable nat
    cdef readonly object batch
    cdef readonly tuple handoff
    cdef tuple arrays  # every array the thread reads or writes: the collector may clear a PacketBatch's slots
    cdef Rows reading
    cdef Rows rows[MAX_HANDOFF]
    cdef int n_handoff
    cdef int fd, hdr
    cdef bint vnet
    cdef int ready_r, ready_w, free_r, free_w, stop_fd, ctl_r, ctl_w, ack_r, ack_w
    cdef pthread_t thread
    cdef bint started, joined
    cdef int free_ids[MAX_HANDOFF]  # hand-over batches the thread holds, a stack
    cdef int n_free
    cdef int current  # the hand-over batch being filled, -1 for none
    cdef unsigned int held  # the loop's side: bit i, hand-over batch i was taken and not given back yet
    cdef uint8_t token  # the loop's side: the last pause request's number
    cdef readonly bint paused  # not reading the device (pause())
    cdef readonly int error  # errno of the read that stopped the pump (it handed over FAILED); ENODEV: poll() said
    # POLLERR or POLLHUP and there was nothing to read (a TUN whose interface is going), EBADF: POLLNVAL
    cdef bint no_wait  # waited in vain for a hand-over batch while handing this read batch's packets
    cdef readonly int spin_us
    cdef uint64_t c_packets, c_reads, c_written, c_handed, c_copied, c_dropped, c_waited
    cdef uint64_t c_spin_found, c_spin_empty, c_spin_ns
    cdef uint64_t c_failed[N_ERRNOS]

    def __cinit__(self):
        self.ready_r = self.ready_w = self.free_r = self.free_w = self.stop_fd = -1
        self.ctl_r = self.ctl_w = self.ack_r = self.ack_w = -1
        self.current = -1

    def __init__(self, int fd, NatTable nat not None, batch, handoff, int hdr=0, int spin_us=0):
        cdef int p[2]
        if self.started or self.ready_r >= 0:
            raise RuntimeError("the TUN pump was set up already")  # its pipes would leak
        handoff = list(handoff)
        if not 2 <= len(handoff) <= MAX_HANDOFF:
            raise ValueError(f"a pump takes 2..{MAX_HANDOFF} hand-over batches, got {len(handoff)}")
        if hdr not in (0, VNET_HDR_LEN):
            raise PacketError(f"hdr must be 0 or {VNET_HDR_LEN}, got {hdr}")
        if not 0 <= spin_us <= _MAX_SPIN_US:
            raise ValueError(f"spin_us must be 0..{_MAX_SPIN_US}, got {spin_us}")
        self.fd, self.nat, self.hdr, self.vnet, self.spin_us = fd, nat, hdr, hdr == VNET_HDR_LEN, spin_us
        for b in [batch] + handoff:
            if bool(b.vnet_hdr) != self.vnet:
                raise PacketError("every batch's vnet_hdr must match hdr")
            if b.data.shape[1] != batch.data.shape[1]:
                raise PacketError("the hand-over batches must hold packets as large as the batch read into")
        self.batch, self.handoff = batch, tuple(handoff)
        self.arrays = tuple(a for b in [batch] + handoff
                            for a in (b.data, b.lengths, b.meta, b.verdicts, b.reasons, b.flow_ids))
        _rows_of(batch, &self.reading)
        self.n_handoff = len(handoff)
        for i, b in enumerate(handoff):
            _rows_of(b, &self.rows[i])
            self.free_ids[i] = i
        self.n_free = self.n_handoff
        for which in range(4):  # ready, free, ctl, ack
            if pipe(p) != 0:
                self._close_fds()
                raise OSError(errno, "pipe for the TUN pump")
            for k in range(2):
                zt_pump_nonblock(p[k])
                zt_pump_cloexec(p[k])
            if which == 0:
                self.ready_r, self.ready_w = p[0], p[1]
            elif which == 1:
                self.free_r, self.free_w = p[0], p[1]
            elif which == 2:
                self.ctl_r, self.ctl_w = p[0], p[1]
            else:
                self.ack_r, self.ack_w = p[0], p[1]
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
        nonblocking = zt_pump_is_nonblocking(self.fd)
        if nonblocking < 0:
            raise OSError(errno, f"fd {self.fd} for the TUN pump")
        if not nonblocking:  # its read() would wait for the next packet, and stop() for the read
            raise ValueError(f"the TUN pump needs fd {self.fd} non-blocking")
        if pthread_create(&self.thread, NULL, _main, <void *>self) != 0:
            raise OSError("cannot start the TUN pump's thread")
        self.started = True

    def stop(self):
        """Stop the thread and wait for it; close the pipes. Idempotent. Batches it handed over stay valid."""
        self._join()
        self._close_fds()

    def __dealloc__(self):
        self._join()
        self._close_fds()

    cdef void _join(self) noexcept:
        cdef uint64_t one = 1
        if self.started and not self.joined:
            write(self.stop_fd, &one, 8)
            with nogil:
                pthread_join(self.thread, NULL)
            self.joined = True

    cdef void _close_fds(self) noexcept:
        for fd in (self.ready_r, self.ready_w, self.free_r, self.free_w, self.stop_fd, self.ctl_r, self.ctl_w,
                   self.ack_r, self.ack_w):
            if fd >= 0:
                close(fd)
        self.ready_r = self.ready_w = self.free_r = self.free_w = self.stop_fd = -1
        self.ctl_r = self.ctl_w = self.ack_r = self.ack_w = -1

    def pause(self, double timeout=5.0):
        """Stop reading the device; when this returns the thread reads no more and has handed over
        what it held (take() it before reading the device elsewhere). TimeoutError if it does not
        answer in time: the request is then called off (the pump goes on reading)."""
        cdef uint8_t c
        cdef uint8_t buf[64]
        cdef pollfd pfd
        cdef int r, wait
        cdef ssize_t n, k
        cdef double deadline = _now() + timeout
        if not self.started or self.joined:
            raise RuntimeError("the TUN pump is not running")
        if self.paused:
            return
        # Numbered: the answer to an earlier request that timed out may still come, and must not
        # be taken for this one's (the thread may have been told to resume since).
        self.token = self.token % PAUSE_TOKENS + 1
        c = self.token
        write(self.ctl_w, &c, 1)
        pfd.fd = self.ack_r
        pfd.events = POLLIN
        while True:
            wait = <int>((deadline - _now()) * 1000)
            pfd.revents = 0
            with nogil:
                r = poll(&pfd, 1, wait if wait > 0 else 0)
            n = read(self.ack_r, buf, sizeof(buf)) if r > 0 else 0
            for k in range(n if n > 0 else 0):
                if buf[k] == self.token:
                    self.paused = True
                    return
            if r <= 0 and wait <= 0:
                c = RESUME
                write(self.ctl_w, &c, 1)
                raise TimeoutError("the TUN pump did not pause")

    def resume(self):
        """Read the device again (the caller has stopped reading it)."""
        cdef uint8_t c = RESUME
        if self.paused and self.started and not self.joined:
            self.paused = False
            write(self.ctl_w, &c, 1)

    def take(self):
        """[(hand-over batch index, count)] handed over since the last call; TunError once the device failed."""
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
                self.held |= 1u << buf[k]
                out.append((buf[k], self.rows[buf[k]].count))
        return out

    def give(self, int index):
        """Give hand-over batch index back to the pump (the loop is done with it): once per take()."""
        cdef uint8_t b = <uint8_t>index
        if not 0 <= index < self.n_handoff:
            raise ValueError(f"no hand-over batch {index}")
        if not self.held & (1u << index):
            raise ValueError(f"hand-over batch {index} is not the loop's to give back")  # the pump may be filling it
        self.held &= ~(1u << index)
        if self.free_w >= 0:
            write(self.free_w, &b, 1)

    def cpu_time(self):
        """The thread's CPU time in seconds (0.0 before it started and after it stopped)."""
        if not self.started or self.joined:
            return 0.0
        return max(zt_pump_thread_cpu(self.thread), 0.0)

    def counters(self):
        return {"packets_read": self.c_packets, "batches_read": self.c_reads, "written": self.c_written,
                "handed_over": self.c_handed, "copied": self.c_copied, "dropped": self.c_dropped,  # dropped: new flows, UDP, ICMP
                "waited": self.c_waited,
                # spins after a wake that moved packets: ended by a packet / by the time running out;
                # spin_us: the time spent in them (the CPU they cost)
                "spin_found": self.c_spin_found, "spin_empty": self.c_spin_empty, "spin_us": self.c_spin_ns // 1000}

    def write_failures(self):
        """{errno: slots whose write into the device failed with it} (errno 255 and above under 255)."""
        return {e: self.c_failed[e] for e in range(N_ERRNOS) if self.c_failed[e]}

    # -- the thread -------------------------------------------------------------

    cdef void _run(self) noexcept nogil:
        cdef pollfd fds[4]  # the stop fd, the control pipe, the free pipe (while a batch waits), the device (while reading)
        cdef uint64_t value
        cdef uint8_t c
        cdef int k, err, r
        cdef bint reading = True, failed = False, moved
        cdef Py_ssize_t n
        cdef double spin = self.spin_us * 1e-6, spin_from = 0.0, spin_until = 0.0, slept_from = 0.0, now
        cdef int skip = 0, misses = 0  # wakes to go without a spin; spins in a row that found nothing
        fds[0].fd = self.stop_fd
        fds[1].fd = self.ctl_r
        fds[3].fd = self.fd
        fds[0].events = fds[1].events = fds[2].events = fds[3].events = POLLIN
        while True:
            fds[0].revents = fds[1].revents = fds[2].revents = fds[3].revents = 0
            fds[2].fd = self.free_r if self.current >= 0 else -1  # poll() passes over a negative fd
            if spin_until > 0.0:
                r = poll(fds, 4 if reading else 3, 0)
                if r == 0:
                    now = _now()
                    if now < spin_until:
                        sched_yield()  # the thread that makes the next packet may be waiting for this core
                        continue
                    self.c_spin_empty += 1
                    self.c_spin_ns += <uint64_t>((now - spin_from) * 1e9)
                    spin_until = 0.0
                    if misses < SPIN_BACKOFF:
                        misses += 1
                    skip = (1 << misses) - 1
                    continue
                if r > 0 and (fds[0].revents or fds[1].revents or fds[3].revents):  # not a batch given back only
                    if fds[3].revents:
                        self.c_spin_found += 1
                        misses = skip = 0
                    self.c_spin_ns += <uint64_t>((_now() - spin_from) * 1e9)
                    spin_until = 0.0
            else:
                if spin > 0.0 and skip:
                    slept_from = _now()
                r = poll(fds, 4 if reading else 3, -1)
                if r > 0 and skip and reading and fds[3].revents and _now() - slept_from < spin:
                    misses = skip = 0  # a spin would have found this one: traffic flows again
            if r < 0:
                if errno == EINTR:
                    continue
                self._fail(errno)
                return
            if fds[0].revents:
                read(self.stop_fd, &value, 8)
                return
            if fds[1].revents:
                while read(self.ctl_r, &c, 1) == 1:
                    if c == RESUME:
                        reading = not failed
                    else:  # answered also once failed: the loop must not wait for it
                        if self.current >= 0:
                            self._hand_current()  # what it gathered goes before the loop reads the device
                        reading = False
                        write(self.ack_w, &c, 1)
                continue
            moved = False
            if reading and fds[3].revents:
                for k in range(READS_PER_WAKE):
                    n = self._read(&self.reading, &err)
                    if n == 0:
                        if not err and k == 0 and fds[3].revents & (POLLERR | POLLHUP | POLLNVAL):
                            # nothing to read, and poll() would say so again at once, for ever
                            err = EBADF if fds[3].revents & POLLNVAL else ENODEV
                        if err:
                            self._fail(err)
                            failed = True
                            reading = False
                        break
                    self._pump(n)
                    moved = True
                    if n < self.reading.slots:
                        break
            # The loop gets the batch being filled once it holds none: while it works through one,
            # the rare packets of the wakes meanwhile gather in the next (one batch per wake would
            # leave the loop's 8 batches of 64 slots holding a packet or two each, and drop the next).
            self._reclaim()
            if self.current >= 0 and self.n_free + 1 == self.n_handoff:
                self._hand_current()
            if moved and reading and spin > 0.0:
                if skip:
                    skip -= 1
                else:
                    spin_from = _now()
                    spin_until = spin_from + spin

    cdef void _hand_current(self) noexcept nogil:
        self.c_handed += 1
        self._hand(<uint8_t>self.current)
        self.current = -1

    cdef void _reclaim(self) noexcept nogil:
        """Take back the hand-over batches the loop gave back."""
        cdef uint8_t buf[MAX_HANDOFF]
        cdef ssize_t n
        cdef int k
        while True:
            n = read(self.free_r, buf, MAX_HANDOFF)
            if n <= 0:
                return
            for k in range(n):
                if self.n_free < self.n_handoff:
                    self.free_ids[self.n_free] = buf[k]
                    self.n_free += 1

    cdef Rows *_handoff_rows(self) noexcept nogil:
        """The hand-over batch with room for one more packet, or NULL while the loop holds them all."""
        if self.current >= 0 and self.rows[self.current].count == self.rows[self.current].slots:
            self._hand_current()
        if self.current < 0:
            if self.n_free == 0:
                self._reclaim()
            if self.n_free == 0:
                if self.no_wait or not self._wait_for_batch():
                    self.no_wait = True  # the rest of this read batch's rare packets: dropped at once
                    return NULL
            self.n_free -= 1
            self.current = self.free_ids[self.n_free]
            self.rows[self.current].count = 0
        return &self.rows[self.current]

    cdef bint _wait_for_batch(self) noexcept nogil:
        """Wait up to WAIT_MS for the loop to give a hand-over batch back (not past a stop); whether it did."""
        cdef pollfd fds[2]
        self.c_waited += 1
        fds[0].fd = self.free_r
        fds[1].fd = self.stop_fd
        fds[0].events = fds[1].events = POLLIN
        fds[0].revents = fds[1].revents = 0
        if poll(fds, 2, WAIT_MS) <= 0 or fds[1].revents:
            return False
        self._reclaim()
        return self.n_free > 0

    cdef void _hand(self, uint8_t b) noexcept nogil:
        while write(self.ready_w, &b, 1) < 0 and errno == EINTR:
            pass

    cdef void _fail(self, int err) noexcept nogil:
        if self.current >= 0:
            self._hand_current()
        self.error = err
        self._hand(FAILED)

    cdef Py_ssize_t _read(self, Rows *r, int *err) noexcept nogil:
        """Read packets into r's slots until it is full or none is queued; return how many (*err: the errno that ended it)."""
        cdef Py_ssize_t i = 0
        while True:
            i = read_slots(self.fd, r.data, r.stride, r.lengths, i, r.slots, self.hdr, False, err)
            if err[0] != EINTR:
                break
        r.count = i
        return i

    cdef void _pump(self, Py_ssize_t n) noexcept nogil:
        """Parse, NAT and write back the n packets read; copy the rest into the hand-over batch."""
        cdef Rows *r = &self.reading
        cdef Rows *h
        cdef Py_ssize_t i, j, rare, no_flow
        cdef uint8_t *p
        cdef ssize_t w
        cdef int e
        self.c_packets += n
        self.c_reads += 1
        self.no_wait = False
        parse_rows(r.data, r.stride, r.lengths, r.meta, n, self.vnet)
        rare = self.nat.process_rows(r.data, r.stride, r.meta, r.verdicts, r.reasons, r.flow_ids, n, _now(), &no_flow)
        for i in range(n):
            if r.verdicts[i] == V_WRITE:
                p = r.data + i * r.stride + HEADROOM - self.hdr
                while True:
                    w = write(self.fd, p, r.lengths[i] + self.hdr)
                    if w >= 0 or errno != EINTR:
                        break
                if w >= 0:
                    self.c_written += 1
                else:
                    e = errno
                    self.c_failed[e if e < N_ERRNOS else N_ERRNOS - 1] += 1
                continue
            if (r.verdicts[i] == V_DROP and r.reasons[i] != NO_FLOW) or r.verdicts[i] == V_OTHER:
                continue  # counted by the NAT as dropped; the loop would do nothing with it
            h = self._handoff_rows()
            if h == NULL:
                if r.verdicts[i] == V_NEW_FLOW:
                    self.nat.forget_new(r.flow_ids[i])
                if r.verdicts[i] != V_DROP:  # a packet of no flow counts as a drop already
                    self.c_dropped += 1
                continue
            j = h.count
            h.count += 1
            self.c_copied += 1
            memcpy(h.data + j * h.stride + HEADROOM - self.hdr, r.data + i * r.stride + HEADROOM - self.hdr,
                   r.lengths[i] + self.hdr)
            h.lengths[j] = r.lengths[i]
            h.meta[j] = r.meta[i]
            h.verdicts[j] = r.verdicts[i]
            h.reasons[j] = r.reasons[i]
            h.flow_ids[j] = r.flow_ids[i]


cdef int _rows_of(batch, Rows *r) except -1:
    cdef uint8_t[:, ::1] data = batch.data
    cdef int[::1] lengths = batch.lengths
    cdef uint8_t[::1] verdicts = batch.verdicts, reasons = batch.reasons
    cdef int32_t[::1] flow_ids = batch.flow_ids
    r.data, r.stride, r.slots = &data[0, 0], data.shape[1], data.shape[0]
    r.lengths, r.meta = &lengths[0], meta_of(batch)
    r.verdicts, r.reasons, r.flow_ids = &verdicts[0], &reasons[0], &flow_ids[0]
    r.count = 0
    return 0
