"""Unpacking zip members without trusting their headers.

A zip header may lie about a member's size (a zip bomb declares little and inflates to much).
:func:`stream_member` counts what a member really yields while it is copied and stops at the first
byte past its declared size or past the caller's budget; the caller turns the
:class:`MemberOverflow` into its own error message (a failed case, a refused install).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

#: Bytes read per step of a copy.
COPY_CHUNK = 2**20


class MemberOverflow(Exception):
    """A member yielded more than it may: ``past_declared`` (more than its header says) or, when
    that is false, more than the budget left."""

    def __init__(self, member: str, declared: int, past_declared: bool):
        super().__init__(member)
        self.member = member
        self.declared = declared
        self.past_declared = past_declared


def stream_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: int, *,
                  exclusive: bool = False) -> int:
    """Copy member ``info`` to ``target`` in chunks, at most ``budget`` bytes and never more than the
    member declares (:class:`MemberOverflow` otherwise); ``exclusive`` refuses an existing
    ``target``. Returns the bytes written; zipfile checks the member's CRC at its end."""
    written = 0
    with archive.open(info) as source, open(target, "xb" if exclusive else "wb") as out:
        while chunk := source.read(COPY_CHUNK):
            written += len(chunk)
            if written > info.file_size:
                raise MemberOverflow(info.filename, info.file_size, past_declared=True)
            if written > budget:
                raise MemberOverflow(info.filename, info.file_size, past_declared=False)
            out.write(chunk)
    return written


__all__ = ["COPY_CHUNK", "MemberOverflow", "stream_member"]
