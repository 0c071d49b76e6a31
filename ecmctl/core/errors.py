"""User-facing errors: the CLI prints them as one line and exits 2, without a traceback.

One mechanism: stages raise `UserError` for anything the user can fix; `as_user_error` also recognises the
environment's failures that surface as other exceptions (an unwritable or full filesystem wherever it was
hit, a missing third-party module), so that the CLI (`ecmctl.cli.app.user_errors`) and sweeps classify a
failure the same way: a user error is one line, anything else is a bug with its traceback.
"""

from __future__ import annotations

import errno


class UserError(Exception):
    """Bad input a user can fix (file, field, option). The message names what and how."""

    exit_code = 2


class DiskFull(UserError):
    """No space (or quota) left where a file had to be written: one line, and a run still records `failed`."""


# errno values that mean "this path cannot be written here", whoever raised them: the user's to fix
PATH_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT})


def as_user_error(e: BaseException) -> UserError | None:
    """The UserError for a failure that is the user's (see the module docstring), None for a bug."""
    if isinstance(e, UserError):
        return e
    if isinstance(e, OSError) and e.errno in PATH_ERRNOS and e.filename:
        return UserError(f"{e.filename}: {e.strerror}; choose a writable location")
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):  # a write() names no file
        return DiskFull(f"{e.strerror or 'no space left on device'} while writing; free space or choose another "
                        "location")
    if isinstance(e, ModuleNotFoundError) and e.name and not e.name.startswith("ecmctl"):
        return UserError(f"missing dependency: no module named {e.name!r}; install ecmctl's dependencies "
                         "(`make install`)")
    return None


def first_line(e: BaseException) -> str:
    """An error's first line, or its type when it has none: the `reason` a run, job or sweep records."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def as_interrupt(e: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C/SIGTERM that ended this failure, or None when it was not one.

    Libraries that catch everything and raise their own error hide an interrupt inside the chain (mmengine
    turns a KeyboardInterrupt that lands in yapf, while a checkpoint is saved, into a SyntaxError): a run
    stopped by the user must still end `interrupted` and resumable, never `failed`."""
    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            if cause is not e:
                cause = type(cause)(f"interrupted ({type(e).__name__} raised while stopping)")  # SIGTERM's kept
                cause.__cause__ = e
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None

