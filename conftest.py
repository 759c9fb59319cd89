"""Suite-wide mechanics of the test command (unit tests and nbval over notebooks/): parallel
workers that share the machine's cores, notebooks kept whole on one worker, kernels on private
Unix sockets, and a stall that fails with the kernel's stacks instead of hanging the suite."""
from __future__ import annotations

import os
import sys

import pytest

# Tests run offline on the toy profile with progress bars off; notebook kernels inherit this.
os.environ.setdefault("EDITNB_PROFILE", "toy")
os.environ.setdefault("EDITNB_NO_PROGRESS", "1")
os.environ.setdefault("EDITNB_STATIC", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _share_cores() -> None:
    """Under pytest-xdist, each worker (and every kernel it starts, which inherits the
    environment) gets its share of the cores: two workers on two cores each use one thread,
    instead of four threads fighting over two cores."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers < 2:
        return
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = threads
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(threads))


_share_cores()


def _ipc_nbval_kernels() -> None:
    """nbval starts its kernels over TCP on ports picked by binding port 0 and letting go: two
    workers starting kernels at the same moment can pick the same port (jupyter_client #487).
    Its kernels listen on Unix sockets in a private folder instead, as editnb.figures'
    executor does; and a cell that passes nbval's deadline prints the kernel's stacks before
    nbval interrupts it."""
    try:
        import nbval.kernel as nbk
    except ImportError:
        return
    from queue import Empty

    from editnb.figures import kernel_stacks, start_kernel

    def start_new_kernel(startup_timeout=60, kernel_name="python", **kwargs):
        return start_kernel(kernel_name, nbk.NbvalKernelspecManager(), startup_timeout, **kwargs)

    await_reply = nbk.RunningKernel.await_reply

    def await_reply_or_stacks(self, msg_id, timeout=None):
        try:
            return await_reply(self, msg_id, timeout=timeout)
        except Empty:
            print(f"nbval: no reply within {timeout} s; the kernel's stacks:\n"
                  f"{kernel_stacks(self.km.provisioner.process.pid)}", file=sys.stderr, flush=True)
            raise

    nbk.start_new_kernel = start_new_kernel
    nbk.RunningKernel.await_reply = await_reply_or_stacks


_ipc_nbval_kernels()


def pytest_collection_modifyitems(config, items):
    """The longest items first (the whole-chapter runs on sd15-shaped, headless or in the browser,
    then the notebooks), so that the workers finish together.  The test command keeps this order
    (``--dist loadscope --no-loadscope-reorder``): a scope (a notebook's cells, which share its
    kernel; a test module; a test class) goes whole to one worker, and the scopes in this order."""
    chapter_runs = ("tests/test_chapters_sd15_shaped.py", "tests/test_browser.py")
    # a chapter that the browser test runs on the toy profile (05) is not run again by nbval: the
    # browser test executes every cell and checks its NBVAL_CHECK_OUTPUT cells (TOY_CHAPTERS there)
    toy_in_browser = {chapter for item in items if item.nodeid.startswith("tests/test_browser.py::TestBrowser")
                      for chapter in item.module.TOY_CHAPTERS if item.nodeid.split("::")[1] == f"TestBrowser{chapter}"}
    twice = [item for item in items if type(item).__name__ == "IPyNbCell"
             and item.nodeid.split("::")[0] in {f"notebooks/{c}.ipynb" for c in toy_in_browser}]
    if twice:
        config.hook.pytest_deselected(items=twice)
        items[:] = [item for item in items if item not in twice]
    items.sort(key=lambda item: 0 if item.nodeid.startswith(chapter_runs) else
               1 if type(item).__name__ == "IPyNbCell" else 2)
