# The parser's C entry points, for the modules that parse from their own thread (tunpump.pyx).
from libc.stdint cimport uint8_t

from core cimport Meta


cdef int parse_one(const uint8_t *p, Py_ssize_t n, Meta *m) noexcept nogil
cdef int check_vnet(const uint8_t *h, Meta *m) noexcept nogil
