"""The main job: execute the chapter notebooks top to bottom and write their figures.

``editnb figures`` runs every notebook of ``notebooks/`` (on the toy profile unless told
otherwise), saves the executed copy and every PNG output under ``figures/<notebook>/``, and stops
with a one-line error naming the notebook and cell that failed.

:func:`execute_notebook` is the one way the project executes a notebook outside nbval (the main
job and the sd15-shaped chapter tests).  It talks to the kernel the way nbval does, through
jupyter_client's blocking client, and not through nbclient's asyncio client: the sd15-shaped
chapter runs under nbclient stalled now and then with the kernel idle and the client still
waiting for an execute reply, while the blocking path never did.  The kernel listens on Unix
sockets in a private folder (IPC transport), so kernels started at the same moment by parallel
test workers cannot race for TCP ports.  Every cell has a deadline: a cell that passes it fails
with the kernel's Python stacks (``py-spy dump``, when installed) instead of hanging.
"""
from __future__ import annotations

import atexit
import base64
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
#: per-cell deadline of the main job and the tests, in seconds (the slowest cell takes about a minute)
CELL_TIMEOUT = 300
_SOCKETS: str | None = None  # the folder of this process's kernel sockets


class CellError(RuntimeError):
    """A cell raised, timed out or lost its kernel; ``cell_index`` names it."""

    def __init__(self, message: str, cell_index: int):
        super().__init__(message)
        self.cell_index = cell_index


def kernel_stacks(pid: int) -> str:
    """The Python stacks of every thread of process `pid`, read from outside with ``py-spy dump``
    (it works on a stopped or deadlocked process too); a line saying why when they cannot be read."""
    spy = shutil.which("py-spy")
    if spy is None:
        return "(kernel stacks unavailable: py-spy is not installed)"
    done = subprocess.run([spy, "dump", "--nonblocking", "--pid", str(pid)], capture_output=True, text=True, timeout=60)
    return (done.stdout + done.stderr).strip() or f"(py-spy printed nothing for pid {pid})"


def _append_output(outputs: list, msg: dict, clear_pending: list) -> None:
    import nbformat

    kind = msg["msg_type"]
    if kind == "clear_output":
        if msg["content"].get("wait"):
            clear_pending[:] = [True]
        else:
            outputs.clear()
        return
    if kind not in ("stream", "display_data", "execute_result", "error"):
        return  # status, execute_input, comm traffic of widgets: nothing to keep
    if clear_pending:
        outputs.clear()
        clear_pending.clear()
    out = nbformat.v4.output_from_msg(msg)
    if kind == "stream" and outputs and outputs[-1].get("output_type") == "stream" and outputs[-1].name == out.name:
        outputs[-1].text += out.text
    else:
        outputs.append(out)


def start_kernel(kernel_name: str = "python3", kernel_spec_manager=None, startup_timeout: float = 120, **start_kwargs):
    """Start a kernel listening on Unix sockets in a private folder (IPC transport) and a blocking
    client ready to talk to it:
    ``(manager, client)``.  Kernels started at the same moment by parallel processes cannot race
    for TCP ports this way.  `start_kwargs` go to ``KernelManager.start_kernel`` (``cwd``, ``env``)."""
    from jupyter_client.manager import KernelManager

    global _SOCKETS
    if _SOCKETS is None:  # one private folder per process, removed when the process exits
        _SOCKETS = tempfile.mkdtemp(prefix="editnb-kernels-")
        atexit.register(shutil.rmtree, _SOCKETS, ignore_errors=True)
    extra = {} if kernel_spec_manager is None else {"kernel_spec_manager": kernel_spec_manager}
    # jupyter_client numbers the sockets <ip>-1 ... <ip>-5 and removes them at shutdown
    km = KernelManager(kernel_name=kernel_name, transport="ipc", ip=os.path.join(_SOCKETS, uuid.uuid4().hex[:12]), **extra)
    km.start_kernel(**start_kwargs)
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=startup_timeout)
    except RuntimeError:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        raise
    return km, kc


def execute_notebook(nb, cwd: str | Path, timeout: float = CELL_TIMEOUT, startup_timeout: float = 120,
                     desc: str | None = None):
    """Run every code cell of notebook `nb` (an nbformat node, changed in place) in a fresh
    ``python3`` kernel started in folder `cwd`, each cell within `timeout` seconds.  The kernel
    inherits this process's environment.  Returns each code cell's wall time in seconds, by cell
    index.  Raises :class:`CellError` on the first cell that raises (its traceback), passes its
    deadline (the kernel's stacks) or kills its kernel.  A progress bar over the cells (`desc`)
    shows unless progress bars are off (the tests)."""
    from queue import Empty

    from .runtime import progress

    km, kc = start_kernel(startup_timeout=startup_timeout, cwd=str(cwd))
    seconds = {}
    code = [(index, cell) for index, cell in enumerate(nb.cells) if cell.cell_type == "code"]
    try:
        for index, cell in progress(code, desc=desc, unit="cell"):
            cell.outputs, clear_pending = [], []
            msg_id = kc.execute(cell.source, allow_stdin=False)
            start = time.monotonic()
            deadline = start + timeout
            idle = False
            while not idle:  # outputs until the kernel says it is idle again for this cell
                if time.monotonic() > deadline:
                    stacks = kernel_stacks(km.provisioner.process.pid)
                    raise CellError(f"cell {index} passed its {timeout:g} s deadline; the kernel's stacks:\n{stacks}", index)
                if not km.is_alive():
                    raise CellError(f"the kernel died while running cell {index}", index)
                try:
                    msg = kc.get_iopub_msg(timeout=1.0)
                except Empty:
                    continue
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                if msg["msg_type"] == "status":
                    idle = msg["content"]["execution_state"] == "idle"
                else:
                    _append_output(cell.outputs, msg, clear_pending)
            while True:  # the reply was sent before the idle status, so it is already here
                try:
                    reply = kc.get_shell_msg(timeout=max(1.0, deadline - time.monotonic()))
                except Empty:
                    raise CellError(f"cell {index}: the kernel went idle but sent no execute reply", index) from None
                if reply["parent_header"].get("msg_id") == msg_id:
                    break
            seconds[index] = time.monotonic() - start
            cell.execution_count = reply["content"].get("execution_count")
            if reply["content"]["status"] == "error":
                c = reply["content"]
                trace = "\n".join(c.get("traceback", []))
                raise CellError(f"cell {index} raised {c.get('ename')}: {c.get('evalue')}\n{trace}", index)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    return seconds


def run_notebooks(notebooks=(), out: str | Path = "figures", profile: str = "toy", timeout: int = CELL_TIMEOUT) -> list[Path]:
    import nbformat

    paths = [Path(p) for p in notebooks] or sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
    if not paths:
        raise RuntimeError(f"no notebooks found in {NOTEBOOKS_DIR}")
    out = Path(out)
    os.environ["EDITNB_PROFILE"] = profile  # the kernel inherits it; setup() obeys it
    os.environ.setdefault("EDITNB_STATIC", "1")  # headless: no frontend to show widgets
    written = []
    for path in paths:
        if not path.exists():
            raise RuntimeError(f"notebook {path} does not exist")
        nb = nbformat.read(path, as_version=4)
        print(f"running {path.name} ...", flush=True)
        try:
            seconds = execute_notebook(nb, cwd=path.parent, timeout=timeout, desc=path.stem)
        except CellError as e:
            first = str(e).strip().splitlines()[0]
            raise RuntimeError(f"{path.name} failed: {first}") from None
        folder = out / path.stem
        folder.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, folder / path.name)
        n = 0
        for i, cell in enumerate(nb.cells):
            for output in cell.get("outputs", []):
                png = output.get("data", {}).get("image/png")
                if png:
                    n += 1
                    target = folder / f"cell{i:02d}_{n:02d}.png"
                    target.write_bytes(base64.b64decode(png))
                    written.append(target)
        print(f"  {n} figure(s) -> {folder} ({sum(seconds.values()):.0f} s of cells)", flush=True)
    return written
