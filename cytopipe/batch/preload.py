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

It also keeps the garbage collector off until everything is frozen (its
full collections over the objects being loaded cost the imports and warming
~0.3 s), and, before NumPy loads its BLAS, applies the thread settings of a Dask
``distributed.nanny.pre-spawn-environ`` the user configured (the process is
started before this process has Dask loaded; OpenBLAS reads them only as it
loads, and the workers inherit its threads).

Anywhere else, importing it only loads the modules.
docs/performance.md ("Start-up and exit") has the measurements.
"""

from __future__ import annotations

import atexit
import gc
import os

# Set (MARKER to "1") only in the environment the forkserver is launched with; STRATEGY: the run's
# strategy (name@version or folder) when known, or DEFAULT for the default one, resolved here (the
# command starts this process before it has loaded the strategy registry)
from .cluster import _DEFAULT_STRATEGY as DEFAULT
from .cluster import _MARKER as MARKER
from .cluster import _STRATEGY as STRATEGY

_FORKSERVER = os.environ.pop(MARKER, None) == "1"  # its children must not see the markers
if _FORKSERVER:
    gc.disable()  # until frozen, below: no full collections walking what is being imported
    import dask  # no NumPy yet

    os.environ.update({k: str(v) for k, v in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
                       if k.endswith("_NUM_THREADS") and v is not None})

import distributed  # noqa: E402,F401  (the worker itself)
import flowkit  # noqa: E402,F401  (the gates and the strategy's parse; the readers load it only when used)
from PIL import ImageDraw  # noqa: E402,F401  (each plot's title and labels)

from ..review import plots  # noqa: E402  (the report's gate plots, drawn in the worker)
from . import task  # noqa: E402

__all__: list[str] = []


def _warm(ref: str) -> None:
    task.worker_versions()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1), dpi=80)
    FigureCanvasAgg(fig)
    fig.add_subplot().set_title("x")
    fig.canvas.draw()
    if ref:
        from ..strategy.registry import DEFAULT_STRATEGY, load_strategy

        ref = DEFAULT_STRATEGY if ref == DEFAULT else ref
        try:  # as the workers will: the driver sends the strategy's resolved folder, drafts refused
            strategy = load_strategy(ref)
            task._strategy_in_worker(str(strategy.directory.resolve()), False)  # noqa: SLF001 (same stage)
            plots.draw_frames(strategy)
        except Exception:  # noqa: BLE001 - a bad strategy is the driver's to report; workers load their own
            pass


if _FORKSERVER:
    _warm(os.environ.pop(STRATEGY, ""))  # still without collections: they cost it ~0.15 s
    gc.freeze()
    gc.enable()  # in the forked workers
    atexit.register(os._exit, 0)  # forked workers never run atexit handlers; only the forkserver does
