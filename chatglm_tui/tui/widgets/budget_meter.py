"""The context-budget meter: how the 2048-token window is split between history, instruction, draft and reply.

It fits its line from an 80-column terminal up: as room runs out the legend's words go first (full words, then
short ones, then none), then the alert gets shorter, then the bar; the numbers and the alert always stay (the
tooltip has it all in words). It is recounted at a pause in typing, and while a reply streams at most every
`RECOUNT_DELAY` (the reply so far counts as history).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from rich.text import Text
from textual.css.query import NoMatches
from textual.reactive import reactive
from textual.timer import Timer
from textual.widget import Widget

from chatglm_tui.engine.protocol import Budget

WARN_AT = 0.75  # share of the window (reply reserve included) where the meter turns amber
DANGER_AT = 0.90
BAR_CELLS = 16
RECOUNT_DELAY = 0.08  # seconds: a typing pause before recounting, or the most a streaming reply waits (1-6 ms each)
# Every prompt ends with [gMASK] <sop>. A Budget counts them in history_tokens; the meter shows them with the
# draft (what sending costs), so an empty chat shows history 0.
PROMPT_END_TOKENS = 2
# The legend's labels, widest first; None: no legend.
LEGENDS: tuple[dict[str, str] | None, ...] = (
    {"history": "history", "instruction": "instruction", "draft": "draft", "reserved": "reply"},
    {"history": "hist", "instruction": "instr", "draft": "draft", "reserved": "reply"},
    {"history": "h", "instruction": "i", "draft": "d", "reserved": "r"},
    None,
)


class Layout(NamedTuple):
    """How much of the meter's line to show."""

    legend: dict[str, str] | None
    short_alert: bool
    bar: int  # cells
    tight_numbers: bool  # "1,234+512/2,048" instead of "1,234 + 512 / 2,048"


# Tried in order until one fits: the legend's words go first, then the alert's, then the bar and the spaces.
LAYOUTS = (*(Layout(legend, False, BAR_CELLS, False) for legend in LEGENDS),
           Layout(None, True, BAR_CELLS, False), Layout(None, True, BAR_CELLS // 2, False),
           Layout(None, True, BAR_CELLS // 2, True), Layout(None, True, 0, True))


def describe_dropped(dropped: tuple[int, ...]) -> str:
    """'1 oldest round' / '3 oldest rounds' left out."""
    count = len(dropped)
    return f"{count} oldest round{'s' if count != 1 else ''} left out"


def shown_parts(budget: Budget) -> list[tuple[str, int]]:
    """(part, tokens) as the meter shows them: the prompt's closing [gMASK] <sop> with the draft, not the history."""
    end = min(PROMPT_END_TOKENS, budget.history_tokens)
    return [("history", budget.history_tokens - end), ("instruction", budget.instruction_tokens),
            ("draft", budget.query_tokens + end), ("reserved", budget.reserved)]


def bar_cells(budget: Budget, cells: int = BAR_CELLS) -> list[tuple[str, int]]:
    """How many bar cells each part gets; every non-empty part shows at least one cell, the total is `cells`."""
    parts = shown_parts(budget)
    parts[-1] = ("reserved", min(budget.reserved, max(budget.window - budget.used, 0)))
    scale = cells / max(budget.window, budget.used + budget.reserved, 1)
    sized = [(name, max(1, round(tokens * scale)) if tokens > 0 else 0) for name, tokens in parts]
    while sum(size for _, size in sized) > cells:  # the minimum of one cell can overshoot: trim the largest
        index = max(range(len(sized)), key=lambda i: sized[i][1])
        sized[index] = (sized[index][0], sized[index][1] - 1)
    return sized + [("free", cells - sum(size for _, size in sized))]


class BudgetMeter(Widget):
    """`ctx ███▒▒░░ 1,234 + 512 / 2,048` and the parts named; warns as the window fills and when rounds drop."""

    DEFAULT_CSS = """
    BudgetMeter { width: 100%; height: 1; }
    BudgetMeter > .budget-meter--history { color: $primary; }
    BudgetMeter > .budget-meter--instruction { color: $secondary; }
    BudgetMeter > .budget-meter--draft { color: $accent; }
    BudgetMeter > .budget-meter--reserved { color: $foreground-muted; }
    BudgetMeter > .budget-meter--free { color: $panel-lighten-2; }
    BudgetMeter > .budget-meter--label { color: $foreground-muted; }
    BudgetMeter.-warn > .budget-meter--numbers { color: $warning; text-style: bold; }
    BudgetMeter.-danger > .budget-meter--numbers { color: $error; text-style: bold; }
    BudgetMeter > .budget-meter--alert { color: $warning; text-style: bold; }
    """
    COMPONENT_CLASSES = {
        "budget-meter--history", "budget-meter--instruction", "budget-meter--draft", "budget-meter--reserved",
        "budget-meter--free", "budget-meter--label", "budget-meter--numbers", "budget-meter--alert",
    }
    SYMBOLS = {"history": "█", "instruction": "█", "draft": "█", "reserved": "▒", "free": "░"}

    budget: reactive[Budget | None] = reactive(None)
    note: reactive[str] = reactive("")  # shown instead of numbers when no budget is known (e.g. while loading)

    def __init__(self, recount: Callable[[], None], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.recount = recount  # counts the window again and sets `budget` (the screen's, which knows the chat)
        self._timer: Timer | None = None

    def recount_soon(self, *, throttle: bool = False) -> None:
        """Recount after RECOUNT_DELAY: at a pause in typing (each call starts the wait again) or, with `throttle`,
        at most every RECOUNT_DELAY however often it is called (a streaming reply: a pause may never come)."""
        if self._timer is not None and throttle:
            return
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(RECOUNT_DELAY, self._recount_now)

    def _recount_now(self) -> None:
        self._timer = None
        try:
            self.recount()
        except NoMatches:  # the timer fired while the app was closing and the screen's widgets were going
            pass

    def uncounted(self, load_failed: bool) -> None:
        """No tokenizer to count with (yet, or ever when the load failed): say so instead of numbers."""
        self.budget = None
        self.note = ("not counted: the model's tokenizer is not loaded" if load_failed
                     else "counted once the tokenizer is loaded")

    def watch_budget(self, budget: Budget | None) -> None:
        filled = (budget.used + budget.reserved) / budget.window if budget else 0.0
        self.set_class(filled >= DANGER_AT or bool(budget and (budget.dropped_rounds or not budget.fits)),
                       "-danger")
        self.set_class(WARN_AT <= filled < DANGER_AT, "-warn")
        self.tooltip = self.explain(budget) if budget else None

    def render(self) -> Text:
        if self.budget is None:
            style = self.get_component_rich_style
            return Text.assemble(("ctx ", style("budget-meter--label")),
                                 (self.note or "not counted yet", style("budget-meter--label")))
        width = self.size.width
        for layout in LAYOUTS:
            text = self.line(self.budget, layout)
            if text.cell_len <= width:
                return text
        return text  # narrower than any layout: the last, shortest one (cut at the edge)

    def line(self, budget: Budget, layout: Layout) -> Text:
        """The meter's line in one layout."""
        style = self.get_component_rich_style
        text = Text.assemble(("ctx ", style("budget-meter--label")))
        for name, size in bar_cells(budget, layout.bar) if layout.bar else ():
            text.append(self.SYMBOLS[name] * size, style(f"budget-meter--{name}"))
        approx = "" if budget.exact else "≈"  # the remote model's tokenizer is unknown: counts are estimated
        plus, of = ("+", "/") if layout.tight_numbers else (" + ", " / ")
        text.append(f"{' ' if layout.bar else ''}{approx}{budget.used:,}{plus}{budget.reserved:,}{of}{budget.window:,}",
                    style("budget-meter--numbers"))
        alert = self.alert(budget, layout.short_alert)
        if alert:
            text.append(f"  {alert}", style("budget-meter--alert"))
        if layout.legend is not None:
            text.append(" ")
            for name, tokens in shown_parts(budget):
                if tokens or len(layout.legend[name]) > 1:  # the one-letter legend leaves out what is empty
                    text.append(" ■", style(f"budget-meter--{name}"))
                    text.append(f" {layout.legend[name]} {tokens:,}", style("budget-meter--label"))
        return text

    @staticmethod
    def alert(budget: Budget, short: bool) -> str:
        """What is wrong, if anything: the message does not fit, or rounds are left out."""
        if not budget.fits:
            return "✖ too long" if short else "✖ too long for the window"
        if budget.dropped_rounds:
            count = len(budget.dropped_rounds)
            return f"⚠ {count} round{'s' if count != 1 else ''} out" if short else \
                f"⚠ {describe_dropped(budget.dropped_rounds)}"
        return ""

    @staticmethod
    def explain(budget: Budget) -> str:
        """The meter in words (its tooltip)."""
        parts = dict(shown_parts(budget))
        lines = [f"history {parts['history']:,} · instruction {parts['instruction']:,} · "
                 f"draft {parts['draft']:,} (with the {PROMPT_END_TOKENS} tokens that end every prompt) · "
                 f"reply reserve {budget.reserved:,} · free {max(budget.free, 0):,} of {budget.window:,} tokens"]
        if not budget.exact:
            lines.append("estimated (≈): the remote model's tokenizer is not known here, so counts come from the "
                         "length of the text")
        if budget.dropped_rounds:
            lines.append(f"{describe_dropped(budget.dropped_rounds)}: the model will not see them "
                         "(they stay saved and are marked in the chat)")
        if not budget.fits:
            lines.append("the message is too long: shorten it, or lower the reply limit in settings (F3)")
        return "\n".join(lines)
