# The parser's C entry point, for the modules that parse from their own thread (tunpump.pyx).
from libc.stdint cimport uint8_t

from core cimport Meta


cdef void parse_rows(uint8_t *data, Py_ssize_t stride, const int *lengths, Meta *meta, Py_ssize_t count,
                     bint vnet) noexcept nogil
