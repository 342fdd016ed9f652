"""What the local workers have loaded before they start, imported once by the process they are forked from.

:func:`cytopipe.batch.cluster.start_worker_processes` starts a ``forkserver``
that imports this module, then forks every local worker from itself: a
worker starts with FlowKit, pandas, matplotlib, Dask and cytopipe's task
loaded, instead of importing them (~2 s) on its first sample. In that
process only (the launch sets ``CYTOPIPE_FORKSERVER``), importing it also:

* computes what every worker computes once anyway (the software versions a
  result records, matplotlib's fonts and first figure; given the run's
  strategy, ``CYTOPIPE_FORKSERVER_STRATEGY``, its check and parse and its gate
  plots' frames), so each fork inherits it;
* freezes the garbage collector's view of everything loaded so far
  (:func:`gc.freeze`): a worker's collections then never walk those
  objects, which would copy the pages the worker shares with the
  forkserver (the first sample of a fresh worker took ~0.5 s longer);
* makes the forkserver exit without tearing those modules down: it holds the
  command's output pipes, so ``cytopipe run | tee log`` waited ~0.7 s more.

Anywhere else, importing it only loads the modules.
docs/performance.md ("Start-up and exit") has the measurements.
"""

from __future__ import annotations

import atexit
import gc
import os

import distributed  # noqa: F401  (the worker itself)

from ..review import plots  # noqa: F401  (the report's gate plots, drawn in the worker)
from . import task

__all__: list[str] = []

#: Set (to "1") only in the environment the forkserver is launched with; with the run's
#: strategy (``name@version`` or folder) in the second, when known.
MARKER, STRATEGY = "CYTOPIPE_FORKSERVER", "CYTOPIPE_FORKSERVER_STRATEGY"


def _warm(ref: str) -> None:
    task.worker_versions()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1), dpi=80)
    FigureCanvasAgg(fig)
    fig.add_subplot().set_title("x")
    fig.canvas.draw()
    if ref:
        from ..strategy.registry import load_strategy

        try:  # as the workers will: the driver sends the strategy's resolved folder, drafts refused
            strategy = load_strategy(ref)
            task._strategy_in_worker(str(strategy.directory.resolve()), False)  # noqa: SLF001 (same stage)
            plots.draw_frames(strategy)
        except Exception:  # noqa: BLE001 - a bad strategy is the driver's to report; workers load their own
            pass


if os.environ.pop(MARKER, None) == "1":  # the forkserver: its children must not see the markers
    _warm(os.environ.pop(STRATEGY, ""))
    gc.freeze()
    atexit.register(os._exit, 0)  # forked workers never run atexit handlers; only the forkserver does
