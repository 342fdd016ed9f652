"""Report pages re-rendered after the station's decisions, one render at a time, off the request's path.

A decision is recorded and the tables are rewritten before the reviewer's
request returns; the static report (``DIR/report/``) follows in a background
thread: the sample's page and the index where
:func:`cytopipe.review.report.write_report` takes ``samples=``, else the
whole report. Decisions made in a row are rendered together; stopping the
station finishes what is pending.
"""

from __future__ import annotations

import inspect
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["ReportWriter"]

logger = logging.getLogger("cytopipe")


class ReportWriter:
    """Re-renders a run's report pages after decisions, in one background thread.

    Parameters
    ----------
    run_dir
        The output folder of ``cytopipe run``.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.error = ""
        self.written = 0

    def request(self, file: str) -> None:
        """Re-render ``file``'s page and the index soon."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="cytopipe-station-report", daemon=True)
                self._thread.start()
        self._queue.put(file)

    def status(self) -> dict[str, Any]:
        """``pending`` renders, how many were ``written``, the last ``error``."""
        return {"pending": self._queue.unfinished_tasks, "written": self.written, "error": self.error}

    def flush(self, timeout: float = 120.0) -> None:
        """Wait until every requested page is written."""
        end = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < end:
            time.sleep(0.05)

    def close(self) -> None:
        """Write what is pending, then stop the thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        from ..review.report import write_report

        by_sample = "samples" in inspect.signature(write_report).parameters
        while True:
            item = self._queue.get()
            batch = [item]
            while True:  # several decisions in a row: one render
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            files = sorted({f for f in batch if f is not None})
            try:
                if files:
                    # only these samples' pages and the index, where the report supports it
                    write_report(self.run_dir, samples=files) if by_sample else write_report(self.run_dir)
                    self.written += 1
                    self.error = ""
            except Exception as e:  # the decision is recorded; a report that failed says so
                self.error = f"report not updated: {type(e).__name__}: {e}"
                logger.warning("review station: %s", self.error)
            finally:
                for _ in batch:
                    self._queue.task_done()
            if None in batch:
                return
