"""Drive a real Jupyter kernel over jupyter_client and collect what a frontend would see."""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field
from typing import Any

from jupyter_client.manager import start_new_kernel

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


@dataclass
class Cell:
    """What one executed cell produced, as a frontend receives it."""

    status: str
    elapsed: float
    stdout: str = ""
    stderr: str = ""
    outputs: list[dict[str, Any]] = field(default_factory=list)  # display_data/execute_result
    errors: list[dict[str, Any]] = field(default_factory=list)
    reply: dict[str, Any] = field(default_factory=dict)

    @property
    def widgets(self) -> list[dict[str, Any]]:
        return [data for data in self.outputs if WIDGET_MIME in data]

    @property
    def text(self) -> str:
        return "\n".join(data.get("text/plain", "") for data in self.outputs)


class Kernel:
    """A python3 kernel started for a test; every iopub message is kept in ``messages``."""

    def __init__(self, cwd: str, env: dict[str, str] | None = None) -> None:
        kwargs = {"env": env} if env is not None else {}
        self.manager, self.client = start_new_kernel(kernel_name="python3", cwd=cwd, **kwargs)
        self.messages: list[dict[str, Any]] = []

    def run(self, code: str, timeout: float = 60) -> Cell:
        """Execute ``code``; return its outputs once the kernel is idle again."""
        started = time.monotonic()
        msg_id = self.client.execute(code)
        reply = self.client.get_shell_msg(timeout=timeout)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.client.get_shell_msg(timeout=timeout)
        elapsed = time.monotonic() - started
        cell = Cell(status=reply["content"]["status"], elapsed=elapsed, reply=reply["content"])
        while True:
            message = self.client.get_iopub_msg(timeout=timeout)
            self.messages.append(message)
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = message["msg_type"], message["content"]
            if kind == "stream":
                if content["name"] == "stdout":
                    cell.stdout += content["text"]
                else:
                    cell.stderr += content["text"]
            elif kind in ("display_data", "execute_result"):
                cell.outputs.append(content["data"])
            elif kind == "error":
                cell.errors.append(content)
            elif kind == "status" and content["execution_state"] == "idle":
                return cell

    def ok(self, code: str, timeout: float = 60) -> Cell:
        """Execute ``code`` and fail the test unless it ran without error."""
        cell = self.run(code, timeout)
        assert cell.status == "ok", (code, cell.status, cell.stderr, cell.errors)
        return cell

    def wait_for_message(self, predicate: Any, timeout: float = 30) -> dict[str, Any]:
        """The first iopub message (already seen or arriving) for which ``predicate`` holds."""
        for message in self.messages:
            if predicate(message):
                return message
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                message = self.client.get_iopub_msg(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                break
            self.messages.append(message)
            if predicate(message):
                return message
        raise AssertionError(f"no matching iopub message within {timeout}s")

    def final_text(self, fragment: str, timeout: float = 30) -> str:
        """The text/plain of the first display update containing ``fragment``."""
        message = self.wait_for_message(
            lambda m: (
                m["msg_type"] == "update_display_data"
                and fragment in m["content"]["data"].get("text/plain", "")
            ),
            timeout,
        )
        return message["content"]["data"]["text/plain"]

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=False)
