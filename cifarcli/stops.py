"""Stopping on request: Ctrl-C (SIGINT) and SIGTERM, in one place.

A long command stops at a safe point: training ends its last completed epoch in last.pt, a
prediction keeps the rows it wrote, and a file being written is finished first (deferred()).
The exit codes follow the shell's convention: 128 + the signal's number.
"""

import contextlib
import signal
import threading

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Stopped(Exception):
    """Raised on the main thread by SIGTERM while stop_on_sigterm() is active."""

    def __init__(self, signal_number: int):
        super().__init__(signal_number)
        self.signal_number = signal_number


def exit_code(stop: BaseException) -> int:
    """130 for Ctrl-C (KeyboardInterrupt), 143 for SIGTERM."""
    return EXIT_CODES[signal.SIGTERM] if isinstance(stop, Stopped) else EXIT_CODES[signal.SIGINT]


def on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def stop_on_sigterm():
    """SIGTERM raises Stopped, as Ctrl-C raises KeyboardInterrupt, so that both end a run the same
    way; the previous handler comes back afterwards. Python handles signals on the main thread
    only; elsewhere there is nothing to install."""
    if not on_main_thread():
        yield
        return

    def raise_stopped(signal_number, frame):
        raise Stopped(signal_number)

    previous = signal.signal(signal.SIGTERM, raise_stopped)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def surfacing():
    """A Ctrl-C received inside the block comes out of it as KeyboardInterrupt, even where the
    library code it interrupted turned it into an exception of its own (torch's exporter does),
    so that a stop is never reported as that library's failure."""
    if not on_main_thread():
        yield
        return
    received = []

    def interrupt(signal_number, frame):
        received.append(signal_number)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    except Exception:
        if received:
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def deferred(signals=(signal.SIGINT, signal.SIGTERM)):
    """Hold Ctrl-C and SIGTERM until the block ends, then deliver the first one received: an
    exception raised inside torch.save's writer comes out as an unrelated RuntimeError, so a stop
    must wait until the file is written."""
    if not on_main_thread():
        yield
        return
    received: list[int] = []
    previous = {number: signal.signal(number, lambda got, frame: received.append(got)) for number in signals}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)
        if received:
            signal.raise_signal(received[0])
