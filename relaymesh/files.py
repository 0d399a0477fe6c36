"""
Private files written all at once: what the key store, the certificate and
the control API's token need so that a reader never sees half a file and no
other user can read it.

A file is written to a private temporary file in the same directory,
flushed to disk, then renamed over the target. Files are mode 0600 and the
directories holding them 0700. This module does not depend on Twisted.
"""

import errno
import os
import secrets

#: The mode of every file written here: readable by its owner only.
FILE_MODE = 0o600  # claudectl: 0600

#: The mode of a private directory.
DIR_MODE = 0o700


def fsync_directory(path: str) -> None:
    """
    Flush a directory's entries to disk, where the platform allows it.

    @param path: the directory.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_path(path: str, purpose: str = "tmp") -> str:
    """
    Name a fresh temporary file next to C{path}.

    The name starts with C{.}, so it is never taken for a peer's file.

    @param path: the file the temporary file stands in for.
    @param purpose: a word put into the name.
    @return: the temporary file's path.
    """
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.{secrets.token_hex(8)}.{purpose}")


def write_atomically(path: str, data: bytes, sync: bool = True) -> None:
    """
    Replace the file at C{path} with C{data}, all at once, mode 0600.

    The data goes to a new file in the same directory (created exclusively,
    mode 0600), is flushed to disk and then renamed over C{path}, so a
    reader sees the old content or the new one, never a part.

    @param path: the file to write.
    @param data: its new content.
    @param sync: whether to flush the file and its directory to disk; a
        reader still never sees a part without it, but a crash may lose
        the change.
    @raise OSError: if the file cannot be written; C{path} is unchanged.
    """
    temporary = temporary_path(path)
    fd = os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    if sync:
        fsync_directory(os.path.dirname(path) or ".")


def link_or_replace(source: str, target: str) -> None:
    """
    Give C{source}'s file the name C{target} too, unless C{target} exists.

    A hard link fails if the target exists, so of two processes creating
    the same file the first one wins. Where the file system has no hard
    links, the target is replaced instead.

    @param source: the file, already complete.
    @param target: the name it should also have.
    @raise FileExistsError: if C{target} exists.
    """
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        if os.path.exists(target):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), target) from e
        os.replace(source, target)


def make_private_directory(path: str) -> None:
    """
    Create C{path} (and its parents) if missing, the last one mode 0700.

    @param path: the directory.
    @raise NotADirectoryError: if C{path} exists and is not a directory.
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        if not os.path.isdir(path):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path) from None
        return
    os.chmod(path, DIR_MODE)


def remove_file(path: str) -> bool:
    """
    Remove a file if it is there.

    @param path: the file.
    @return: whether C{path} existed and was removed.
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True
