"""A wall-clock limit for one decode: SIGALRM interrupts Python code that runs too long.

A TorchServe worker decodes its batch in the process's main thread, so a timer signal can stop a
decoder between its chunks (PIL feeds its decoders 64 KiB at a time; pydicom's RLE decoder is a
Python loop). One long C call (a single JPEG ``decode``) cannot be interrupted: the header and
size checks before it bound those. Outside the main thread, or while another timer is armed
(e.g. pytest-timeout), no limit is set rather than stealing the other timer.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from medfakedet.decoding import DecodeTimeoutError

__all__ = ["time_limit"]


class _Expired(BaseException):
    """Raised by the alarm; a BaseException so decoders' ``except Exception`` cannot swallow it."""


def _can_arm() -> bool:
    return (
        hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
        and signal.getitimer(signal.ITIMER_REAL)[0] == 0.0
    )


@contextmanager
def time_limit(seconds: float | None, what: str = "decoding the image") -> Iterator[None]:
    """Raise :class:`DecodeTimeoutError` (413) when the block runs longer than ``seconds``.

    Args:
        seconds: the limit; None or a non-positive value: no limit.
        what: names the work in the message.
    """
    if not seconds or seconds <= 0 or not _can_arm():
        yield
        return
    armed = [True]

    def on_alarm(_signum, _frame) -> None:
        if armed[0]:  # not once the block is over
            raise _Expired

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except _Expired:
        raise DecodeTimeoutError(
            f"{what} took longer than the {seconds:g} s limit per image; send a smaller image, "
            "or one in a plain format (PNG, baseline JPEG, uncompressed DICOM)"
        ) from None
    finally:
        armed[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, previous)
