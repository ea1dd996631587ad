# One command sets everything up and runs the tests: `make test`; `make chat` sets up and opens the chat.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of this version is on the build machines' disk; an unpinned torch can pull a multi-GB CUDA build.
TORCH_VERSION ?= 2.13.0

.PHONY: install test chat demo clean gpu-check gpu-wheels

$(VENV)/.installed: pyproject.toml $(wildcard setup.py) $(wildcard chatglm_tui/model/kernels/*.c)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest

# Set up (first time) and open the chat with the default model, downloaded on first use.
chat: install
	$(VENV)/bin/chatglm

# The same app with scripted replies and sample chats: no model, no download.
demo: install
	$(VENV)/bin/chatglm --demo

# On a GPU machine: the CUDA tests and GPU benches in one call (see scripts/gpu-check.sh).
gpu-check:
	bash scripts/gpu-check.sh

# The pure-Python packages gpu-check needs beyond torch/numpy/typer/rich, for a GPU machine without network.
gpu-wheels: install
	$(PY) -m pip download -q --no-deps -d gpu-wheels pytest pluggy iniconfig packaging pygments platformdirs \
		annotated-doc exceptiongroup

clean:
	rm -rf $(VENV) build *.egg-info chatglm_tui/model/kernels/*.so
