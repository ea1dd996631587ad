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
Endpoint = Annotated[Optional[str], typer.Option(help="Chat with the model of an OpenAI-compatible server instead "
                                                      "of a local one (`chatglm serve` elsewhere, vLLM, SGLang), "
                                                      "e.g. http://gpu-box:8000.")]
EndpointModel = Annotated[Optional[str], typer.Option(help="The model to ask the endpoint for (default: the first "
                                                           "it serves).")]
ApiKey = Annotated[Optional[str], typer.Option(help="The endpoint's API key (better: the CHATGLM_API_KEY "
                                                    "environment variable).")]
