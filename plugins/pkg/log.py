"""Loggers that import `logging` only when a record is really emitted.

`import logging` costs ~5-10 ms of every plugin exec (traceback, string, threading, weakref);
most execs never log. Use it like logging.getLogger:

    log = get_logger("pycni.vxlan")
    log.info("GC: releasing %s", cid)

Until something imports logging, no handler or level exists anywhere, so the real logger would
drop anything below WARNING: so does this one, without importing it. Anything else goes to the
real logger, once skel's deferred set-up of the "pycni" handlers (stderr, logFile) is done; or,
in a plugin run that had not imported logging, to skel's sink: the same lines on the same streams,
without importing logging (skel._Sink).
"""
import sys

DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40


class Logger:
    """The logging.Logger methods plugins call (stacklevel counts from the caller, as there)."""

    def __init__(self, name: str):
        self.name = name

    def log(self, level: int, msg, *args, stacklevel: int = 1, **kwargs) -> None:
        skel = sys.modules.get("libcni_py.skel")
        if skel is not None and skel.log_record(self.name, level, msg, args, kwargs):
            return                        # skel's sink wrote it, as the real logger would
        if level < WARNING and "logging" not in sys.modules:
            return
        _real(self.name).log(level, msg, *args, stacklevel=stacklevel + 1, **kwargs)

    def debug(self, msg, *args, stacklevel: int = 1, **kwargs) -> None:
        self.log(DEBUG, msg, *args, stacklevel=stacklevel + 1, **kwargs)

    def info(self, msg, *args, stacklevel: int = 1, **kwargs) -> None:
        self.log(INFO, msg, *args, stacklevel=stacklevel + 1, **kwargs)

    def warning(self, msg, *args, stacklevel: int = 1, **kwargs) -> None:
        self.log(WARNING, msg, *args, stacklevel=stacklevel + 1, **kwargs)

    def error(self, msg, *args, stacklevel: int = 1, **kwargs) -> None:
        self.log(ERROR, msg, *args, stacklevel=stacklevel + 1, **kwargs)


def get_logger(name: str) -> Logger:
    return Logger(name)


def _real(name: str):
    import logging
    from libcni_py.skel import setup_deferred_logging
    setup_deferred_logging()
    return logging.getLogger(name)
