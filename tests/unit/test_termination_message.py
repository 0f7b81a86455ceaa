"""The termination message file: Kubernetes' 4096-byte cap without cutting a character, and no hang on a FIFO."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from job.__main__ import TERMINATION_MESSAGE_LIMIT, write_termination_message


def test_a_long_message_is_cut_on_a_character_boundary(tmp_path: Path) -> None:
    path = tmp_path / "termination-log"
    message = "x" * (TERMINATION_MESSAGE_LIMIT - 1) + "é" + "tail"  # "é" is 2 bytes: it would straddle the cap
    write_termination_message(path, message)
    data = path.read_bytes()
    assert len(data) == TERMINATION_MESSAGE_LIMIT - 1
    assert data.decode("utf-8") == "x" * (TERMINATION_MESSAGE_LIMIT - 1)


def test_a_fifo_nobody_reads_does_not_hang_the_job(tmp_path: Path) -> None:
    fifo = tmp_path / "termination-log"
    os.mkfifo(fifo)
    done = threading.Event()
    thread = threading.Thread(target=lambda: (write_termination_message(fifo, "done"), done.set()), daemon=True)
    thread.start()
    assert done.wait(5), "writing the termination message blocked on a FIFO without a reader"


def test_an_existing_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "termination-log"
    path.write_text("an older, longer message from an earlier try")
    write_termination_message(path, "short")
    assert path.read_text() == "short"
