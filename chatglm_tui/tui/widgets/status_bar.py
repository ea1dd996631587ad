"""The status bar: model, device, quantization, load state (with progress) and the last reply's speed."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.reactive import reactive
from textual.widgets import ProgressBar, Static

from chatglm_tui.engine.protocol import LoadProgress, load_text
from chatglm_tui.terminal.inert import inert_line
from chatglm_tui.tui.inert_display import inert_label


class StatusBar(Horizontal):
    """One line under the prompt describing the engine."""

    state: reactive[str] = reactive("starting")  # starting, loading, ready, failed
    detail: reactive[str] = reactive("")
    speed: reactive[str] = reactive("")

    def __init__(self, model: str, device: str, quantization: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.model, self.device, self.quantization = model, device, quantization

    def compose(self) -> ComposeResult:
        yield Static(id="status-model")
        yield ProgressBar(total=None, show_eta=False, show_percentage=True, id="load-progress")
        yield Static(id="status-state")
        yield Static(id="status-speed")

    def on_mount(self) -> None:
        self._show_engine(f"{self.device} · {self.quantization}")
        self._refresh_state()

    def _show_engine(self, description: str) -> None:
        self.query_one("#status-model", Static).update(
            Text.assemble((inert_line(self.model), "bold"), "  " + inert_line(description)))

    def show_progress(self, progress: LoadProgress) -> None:
        """A load event: progress bar and words. Ready may say which backend runs ("cpu: int4-g128 (C kernels,
        AVX2)"), which then replaces the settings' device and quantization."""
        if progress.stage == "ready" and progress.message:
            self._show_engine(progress.message)
        bar = self.query_one(ProgressBar)
        bar.update(total=progress.total or None, progress=progress.done)
        self.state = "ready" if progress.stage == "ready" else "loading"
        self.detail = load_text(progress)

    def watch_state(self) -> None:
        self._refresh_state()

    def watch_detail(self) -> None:
        self._refresh_state()

    def watch_speed(self, speed: str) -> None:
        if self.is_mounted:
            self.query_one("#status-speed", Static).update(inert_label(speed))

    def _refresh_state(self) -> None:
        if not self.is_mounted:
            return
        self.query_one(ProgressBar).display = self.state == "loading"
        for state in ("starting", "loading", "ready", "failed"):
            self.set_class(self.state == state, f"-{state}")
        symbol = {"ready": "●", "failed": "✖"}.get(self.state, "◌")
        self.query_one("#status-state", Static).update(inert_label(f"{symbol} {self.detail or self.state}"))
