"""`BudgetCount`: the context meter's numbers, counted by the engine for the request the chat would send next.

That is the branch on screen (up to a question being edited), the conversation's instruction, the draft, and, while
a reply streams, the reply so far as the last round's answer. The meter widget says when to count (a pause in
typing, a streaming reply at most every few dozen ms); this part counts and marks the messages left out.
"""

from __future__ import annotations

from collections.abc import Callable

from chatglm_tui.engine.protocol import Engine
from chatglm_tui.errors import ChatGLMError
from chatglm_tui.terminal.wording import counted
from chatglm_tui.tui.chat_host import ChatHost
from chatglm_tui.tui.question_edit import QuestionEdit
from chatglm_tui.tui.reply_flow import ReplyFlow
from chatglm_tui.tui.widgets.budget_meter import BudgetMeter


class BudgetCount:
    """Counts the window for the meter (exactly, with the model's tokenizer, or estimated for a remote model)."""

    def __init__(self, host: ChatHost, engine: Engine, reply_flow: ReplyFlow, question_edit: QuestionEdit,
                 meter: Callable[[], BudgetMeter]) -> None:
        self.host, self.engine, self.reply_flow, self.question_edit = host, engine, reply_flow, question_edit
        self.meter = meter  # the screen's meter, looked up when counting (the part is made before the widgets)

    def refresh(self) -> None:
        """Recount the window for the branch, the instruction, the draft and the reply reserve (exact)."""
        meter, session, pending = self.meter(), self.host.session, self.reply_flow.pending
        rounds, sources = session.history(before=self.question_edit.editing)
        if (pending is not None and self.question_edit.editing is None and sources
                and sources[-1] == (pending.parent_id,)):
            rounds[-1] = (rounds[-1][0], self.reply_flow.streamed)  # the round being answered, with the reply so far
        try:
            budget = self.engine.budget(rounds, self.host.prompt.text, session.instruction,
                                        reserve=session.params.reply_reserve)
        except ChatGLMError:  # no tokenizer yet (or ever, when the load failed)
            meter.uncounted(self.host.load_state == "failed")
            return
        meter.budget = budget
        left_out = {message_id for index in budget.dropped_rounds for message_id in sources[index]}
        self.host.conversation.mark_left_out(left_out)

    def prompt_fits(self, offer_summary: bool = False) -> bool:
        """Whether the prompt as it is now (not at the last typing pause) fits in the window; says if not (unless
        the caller offers to summarize it instead)."""
        self.refresh()
        budget = self.meter().budget
        if budget is not None and not budget.fits:
            if not offer_summary:
                self.host.notify("This message does not fit in the context window: shorten it, or lower the reply "
                                 "limit (F3).", severity="error")
            return False
        return True

    def summary_offer(self) -> str:
        """Why the draft cannot be sent whole, and what summarizing it does."""
        budget = self.meter().budget
        size = f"{counted(budget.query_tokens, 'token')}, " if budget is not None else ""
        return (f"This message ({size}with room for the reply) does not fit the {self.engine.context_window}-token "
                "window. Summarize it in parts, as `chatglm ask` does with a long document? Each part is read in "
                "turn (Esc stops); the whole text is saved, and follow-ups see its summary. Or cancel, and shorten "
                "it or lower the reply limit (F3).")
