"""Options that more than one command takes, declared once (the chat app's and `ask`'s model options)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from chatglm_tui.model.load_options import DTYPES, QUANTIZATIONS


def _choices(names: tuple[str, ...]) -> str:
    return f"{', '.join(names[:-1])} or {names[-1]}."


Model = Annotated[Optional[str], typer.Option("--model", "-m", help="A checkpoint directory or a Hub repo id.")]
Quantization = Annotated[Optional[str], typer.Option(help=_choices(QUANTIZATIONS))]
Dtype = Annotated[Optional[str], typer.Option(help=_choices(DTYPES))]
Device = Annotated[Optional[str], typer.Option(help="auto (a CUDA GPU when there is one, else the CPU), cpu, cuda, "
                                                    "cuda:N or mps.")]
