# Two user-facing entry points: `make demo` and `make test`. Each bootstraps .venv on a fresh machine.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.vfa-installed
# torch/torchvision pinned exactly here (pyproject admits a range): these are on local disk for pip.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
DEMO_DATA ?= runs/demo-data
DEMO_RUN ?= runs/demo

.PHONY: demo test venv clean

$(STAMP): pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check $(TORCH_PINS)
	$(VPY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vfa synth --out $(DEMO_DATA) --preset cpu-demo --force
	$(VENV)/bin/vfa train --preset cpu-demo --train $(DEMO_DATA)/train --val $(DEMO_DATA)/val --out $(DEMO_RUN) --force
	$(VENV)/bin/vfa evaluate --model $(DEMO_RUN)/checkpoints/best.ckpt --data $(DEMO_DATA)/test --out $(DEMO_RUN)/test --force

test: $(STAMP)
	$(VPY) -m pytest -q -n 2 --dist loadgroup

clean:
	rm -rf runs
