"""`python -m chatglm_tui` runs the `chatglm` command."""

from chatglm_tui.cli import main

main()
