"""The context-budget meter: how the 2048-token window is split between history, instruction, draft and reply."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from chatglm_tui.engine.protocol import Budget

WARN_AT = 0.75  # share of the window (reply reserve included) where the meter turns amber
DANGER_AT = 0.90
BAR_CELLS = 16


def describe_dropped(dropped: tuple[int, ...]) -> str:
    """'1 oldest round' / '3 oldest rounds' left out."""
    count = len(dropped)
    return f"{count} oldest round{'s' if count != 1 else ''} left out"


def bar_cells(budget: Budget, cells: int = BAR_CELLS) -> list[tuple[str, int]]:
    """How many bar cells each part gets; every non-empty part shows at least one cell, the total is `cells`."""
    parts = [("history", budget.history_tokens), ("instruction", budget.instruction_tokens),
             ("draft", budget.query_tokens), ("reserved", min(budget.reserved, max(budget.window - budget.used, 0)))]
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

    def watch_budget(self, budget: Budget | None) -> None:
        filled = (budget.used + budget.reserved) / budget.window if budget else 0.0
        self.set_class(filled >= DANGER_AT or bool(budget and (budget.dropped_rounds or not budget.fits)),
                       "-danger")
        self.set_class(WARN_AT <= filled < DANGER_AT, "-warn")
        self.tooltip = self.explain(budget) if budget else None

    def render(self) -> Text:
        style = self.get_component_rich_style
        text = Text.assemble(("ctx ", style("budget-meter--label")))
        if self.budget is None:
            return text.append(self.note or "not counted yet", style("budget-meter--label"))
        budget = self.budget
        for name, size in bar_cells(budget):
            text.append(self.SYMBOLS[name] * size, style(f"budget-meter--{name}"))
        approx = "" if budget.exact else "≈"  # the remote model's tokenizer is unknown: counts are estimated
        numbers = f" {approx}{budget.used:,} + {budget.reserved:,} / {budget.window:,}"
        text.append(numbers, style("budget-meter--numbers"))
        # The alert comes before the legend: on a narrow screen the legend is what gets cut off.
        if not budget.fits:
            text.append("  ✖ too long for the window", style("budget-meter--alert"))
        elif budget.dropped_rounds:
            text.append(f"  ⚠ {describe_dropped(budget.dropped_rounds)}", style("budget-meter--alert"))
        text.append(" ")
        for name, label, tokens in (("history", "history", budget.history_tokens),
                                    ("instruction", "instr", budget.instruction_tokens),
                                    ("draft", "draft", budget.query_tokens),
                                    ("reserved", "reply", budget.reserved)):
            text.append(" ■", style(f"budget-meter--{name}"))
            text.append(f" {label} {tokens:,}", style("budget-meter--label"))
        return text

    @staticmethod
    def explain(budget: Budget) -> str:
        """The meter in words (its tooltip)."""
        lines = [f"history {budget.history_tokens:,} · instruction {budget.instruction_tokens:,} · "
                 f"draft {budget.query_tokens:,} · reply reserve {budget.reserved:,} · "
                 f"free {max(budget.free, 0):,} of {budget.window:,} tokens"]
        if not budget.exact:
            lines.append("estimated (≈): the remote model's tokenizer is not known here, so counts come from the "
                         "length of the text")
        if budget.dropped_rounds:
            lines.append(f"{describe_dropped(budget.dropped_rounds)}: the model will not see them "
                         "(they stay saved and are marked in the chat)")
        if not budget.fits:
            lines.append("the message is too long: shorten it, or lower the reply limit in settings (F3)")
        return "\n".join(lines)
