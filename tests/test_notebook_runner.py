"""editnb.figures.execute_notebook, the executor of the main job and the sd15-shaped chapter runs:
a stalled kernel fails its cell at the deadline with the kernel's stacks, instead of hanging."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest


def test_a_stopped_kernel_fails_at_the_cell_deadline_with_its_stacks(tmp_path):
    """SIGSTOP the kernel in the middle of a cell (a stall: the kernel never answers): the cell
    fails within its deadline plus a few seconds, and the message carries the kernel's Python
    stacks, which name the function the cell was in."""
    import nbformat

    from editnb.figures import CellError, execute_notebook

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import os, time\npid = os.getpid(); open('pid', 'w').write(str(pid))"),
                nbformat.v4.new_code_cell("def waiting_for_ever():\n    while True:\n        time.sleep(0.05)\n"
                                          "waiting_for_ever()")]
    pid_file = tmp_path / "pid"

    def stop_the_kernel():
        for _ in range(600):  # the first cell writes the kernel's pid
            if pid_file.exists() and pid_file.read_text():
                time.sleep(1.0)  # into the second cell
                os.kill(int(pid_file.read_text()), signal.SIGSTOP)
                return
            time.sleep(0.05)

    threading.Thread(target=stop_the_kernel, daemon=True).start()
    start = time.monotonic()
    with pytest.raises(CellError) as failed:
        execute_notebook(nb, cwd=tmp_path, timeout=8)
    assert time.monotonic() - start < 60
    assert failed.value.cell_index == 1 and "passed its 8 s deadline" in str(failed.value)
    assert "waiting_for_ever" in str(failed.value), str(failed.value)[-2000:]


def test_a_raising_cell_names_itself_and_its_error(tmp_path):
    import nbformat

    from editnb.figures import CellError, execute_notebook

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("text"), nbformat.v4.new_code_cell("print('one'); print('two')"),
                nbformat.v4.new_code_cell("1 / 0")]
    with pytest.raises(CellError, match="cell 2 raised ZeroDivisionError") as failed:
        execute_notebook(nb, cwd=tmp_path)
    assert failed.value.cell_index == 2
    assert nb.cells[1].outputs[0]["text"] == "one\ntwo\n"  # one stream output, in order


def test_chapter_map_times_a_chapter_from_its_first_cell_started_to_its_last_cell_done(tmp_path):
    import json

    from editnb.chapters import CHAPTER_MAP, chapter_map

    cells = [{"cell_type": "markdown", "metadata": {}, "source": []},
             {"cell_type": "code", "metadata": {"execution": {"iopub.execute_input": "2026-01-01T10:00:05.000Z",
                                                              "shell.execute_reply": "2026-01-01T10:00:07.500Z"}}},
             {"cell_type": "code", "metadata": {"execution": {"iopub.execute_input": "2026-01-01T10:00:07.600Z",
                                                              "shell.execute_reply": "2026-01-01T10:01:05.250Z"}}}]
    (tmp_path / "03_lime.ipynb").write_text(json.dumps({"cells": cells}))
    (tmp_path / "04_vimaedit.ipynb").write_text(json.dumps({"cells": cells[:1]}))  # never executed
    rows = {r["chapter"]: r for r in chapter_map(tmp_path)}
    assert list(rows) == list(CHAPTER_MAP)
    assert rows["03"]["seconds"] == 60.25 and rows["03"]["title"] == "LIME"
    assert rows["04"]["seconds"] is None and rows["00"]["seconds"] is None  # no timings; no notebook
    assert all(r["seconds"] is None for r in chapter_map(tmp_path / "absent"))  # a wheel install: no notebooks
