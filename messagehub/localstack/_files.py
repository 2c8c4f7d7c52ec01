"""File helpers shared by the local stack components.

PostgreSQL and Dovecot run their workers as other OS users (``postgres``,
``vmail``, ``dovecot``), so the components check that those users can reach
the state dir before they start a server that would fail in an obscure way.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path

from messagehub.localstack.errors import LocalStackError


def write_atomically(path: Path, data: bytes, mode: int = 0o644, gid: int | None = None) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``.

    Readers see either the old or the new content, never a partial file.
    ``gid`` sets the group before the rename, so no reader sees a wrong group.
    """
    tmp_path = path.with_name(f".{path.name}.tmp")
    tmp_path.unlink(missing_ok=True)
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as tmp_file:
        tmp_file.write(data)
        if gid is not None:
            os.fchown(tmp_file.fileno(), -1, gid)
    tmp_path.replace(path)


def check_reachable_by(path: Path, user: str, component: str) -> None:
    """Raise unless ``user`` may search every existing directory from / down to ``path``."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise LocalStackError(f"{component}: OS user {user!r} not found: run deploy/local/install.sh") from None
    group_ids = set(os.getgrouplist(user, entry.pw_gid))

    for directory in [*reversed(path.parents), path]:
        try:
            info = directory.stat()
        except FileNotFoundError:
            return
        if not _may_search(info, entry.pw_uid, group_ids):
            raise LocalStackError(
                f"{component}: the {user!r} user cannot reach {path} because {directory} "
                f"has mode {stat.filemode(info.st_mode)} and owner {_owner(info)}: "
                "use a state dir under /var/tmp/messagehub or make that directory searchable (chmod o+x)"
            )


def _may_search(info: os.stat_result, uid: int, group_ids: set[int]) -> bool:
    if uid == 0:
        return True
    if info.st_uid == uid:
        return bool(info.st_mode & stat.S_IXUSR)
    if info.st_gid in group_ids:
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)


def _owner(info: os.stat_result) -> str:
    try:
        user = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        user = str(info.st_uid)
    try:
        group = grp.getgrgid(info.st_gid).gr_name
    except KeyError:
        group = str(info.st_gid)
    return f"{user}:{group}"
