"""Fenced code blocks in a reply's Markdown, for "copy code block"."""

from __future__ import annotations

import re
from dataclasses import dataclass

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([^\s`]*)[^`]*$")


@dataclass(frozen=True)
class CodeBlock:
    language: str
    code: str

    @property
    def summary(self) -> str:
        """'python · 12 lines · def main():' for a picker."""
        lines = self.code.splitlines()
        first = next((line.strip() for line in lines if line.strip()), "")
        return f"{self.language or 'text'} · {len(lines)} line{'s' if len(lines) != 1 else ''} · {first[:60]}"


def code_blocks(markdown: str) -> list[CodeBlock]:
    """The fenced blocks of `markdown`, in order; an unclosed fence runs to the end (as CommonMark has it)."""
    blocks: list[CodeBlock] = []
    fence: str | None = None
    language, lines = "", list[str]()
    for line in markdown.splitlines():
        if fence is None:
            match = _FENCE.match(line)
            if match:
                fence, language, lines = match.group(1), match.group(2), []
        elif line.strip().startswith(fence[0] * len(fence)) and not line.strip().strip(fence[0]):
            blocks.append(CodeBlock(language, "\n".join(lines)))
            fence = None
        else:
            lines.append(line)
    if fence is not None:
        blocks.append(CodeBlock(language, "\n".join(lines)))
    return blocks
