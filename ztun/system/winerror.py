"""The Win32 error codes ztun meets (iphlpapi, wintun) and the one table of the errno nearest each.

Importable anywhere: RouteError and TunError speak errno on every platform, and keep the
Win32 code itself in .winerror.
"""

import errno as _errno

ERROR_SUCCESS = NO_ERROR = 0
ERROR_FILE_NOT_FOUND = 2
ERROR_ACCESS_DENIED = 5
ERROR_NOT_ENOUGH_MEMORY = 8
ERROR_INVALID_DATA = 13
ERROR_HANDLE_EOF = 38
ERROR_NOT_SUPPORTED = 50
ERROR_INVALID_PARAMETER = 87
ERROR_BUFFER_OVERFLOW = 111
ERROR_ALREADY_EXISTS = 183
ERROR_NO_MORE_ITEMS = 259
ERROR_NOT_FOUND = 1168
ERROR_OBJECT_ALREADY_EXISTS = 5010

ERRNO = {
    ERROR_FILE_NOT_FOUND: _errno.ENOENT,
    ERROR_ACCESS_DENIED: _errno.EACCES,
    ERROR_NOT_ENOUGH_MEMORY: _errno.ENOMEM,
    ERROR_INVALID_DATA: _errno.EIO,
    ERROR_HANDLE_EOF: _errno.EPIPE,
    ERROR_NOT_SUPPORTED: _errno.EOPNOTSUPP,
    ERROR_INVALID_PARAMETER: _errno.EINVAL,
    ERROR_BUFFER_OVERFLOW: _errno.ENOBUFS,
    ERROR_ALREADY_EXISTS: _errno.EEXIST,
    ERROR_NO_MORE_ITEMS: _errno.EAGAIN,
    ERROR_NOT_FOUND: _errno.ESRCH,
    ERROR_OBJECT_ALREADY_EXISTS: _errno.EEXIST,
}


def to_errno(code: int) -> int:
    """The errno nearest a Win32 code (EIO for one ztun does not know)."""
    return ERRNO.get(code, _errno.EIO)


def win_error(cls, what: str, code: int):
    """An error of class cls (RouteError, TunError) for a Win32 code: the nearest errno, and the code in .winerror."""
    err = cls(f"{what}: Win32 error {code}", to_errno(code))
    err.winerror = code
    return err
