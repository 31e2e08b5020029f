# Two user-facing entry points: `make demo` and `make test`. Each bootstraps .venv on a fresh machine.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
VFA := $(VENV)/bin/vfa
STAMP := $(VENV)/.vfa-installed
# torch/torchvision pinned exactly here (pyproject admits a range): these are on local disk for pip.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# Test-only TensorFlow/tf-keras env for the .h5 import equivalence tests; never a vfa dependency.
KERAS_STAMP := .venv-keras/.vfa-keras-installed
DEMO_DATA ?= runs/demo-data
DEMO_RUN ?= runs/demo
CKPT := $(DEMO_RUN)/checkpoints/best.ckpt

.PHONY: demo demo-vertebra test venv clean bench bench-archive oracles

# pip's own messages (e.g. a machine's pip.conf naming index folders that do not exist) go to
# .venv/pip.err, shown only when the install fails: the demo's console is vfa's
$(STAMP): pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	@echo "installing torch and vfa into $(VENV) (pip's messages: $(VENV)/pip.err)"
	@$(VPY) -m pip install -q --disable-pip-version-check $(TORCH_PINS) 2>$(VENV)/pip.err || { cat $(VENV)/pip.err; exit 1; }
	@$(VPY) -m pip install -q --disable-pip-version-check -e '.[test]' 2>>$(VENV)/pip.err || { cat $(VENV)/pip.err; exit 1; }
	touch $(STAMP)

# The Keras env alone (make bench needs it too); `make oracles` builds it with the other oracles.
$(KERAS_STAMP): tests/keras/make_env.sh
	-bash tests/keras/make_env.sh

# The test oracles (docs/development.md#test-oracles): Debian's chromium, dicom3tools (dciodvfy), orthanc,
# dcmtk, r-cran-survival and r-cran-cmprsk in one apt-get call (apt-get update only when one is missing),
# playwright into .venv (no browser download) and .venv-keras. Only what is missing is installed; success
# writes .venv/.vfa-oracles-installed. A failure writes .venv/.vfa-oracles-failed (the reason) and is not
# retried by later runs (the tests then skip, saying why) until `make oracles ORACLES_RETRY=1` or that
# file is deleted. With VFA_REQUIRE_ORACLES=1 or CI=true (.ci/run) a failed install fails this target.
ORACLES_RETRY ?=
oracles: $(STAMP)
	@VENV=$(VENV) KERAS_VENV=.venv-keras ORACLES_RETRY=$(ORACLES_RETRY) bash tests/install_oracles.sh

venv: $(STAMP)

# synthesize -> train (held-out test metrics) -> threshold on validation -> test with TTA,
# report.html and Grad-CAM gallery -> heatmaps with the pointing game -> the cohort analysis of the
# test predictions against synthetic follow-up (planted HR 1.85; the phantom's labels as the reader)
demo: $(STAMP)
	$(VFA) synth --out $(DEMO_DATA) --preset cpu-demo --force
	$(VFA) train --preset cpu-demo --train $(DEMO_DATA)/train --val $(DEMO_DATA)/val --test $(DEMO_DATA)/test \
		--out $(DEMO_RUN) --force
	$(VFA) evaluate --model $(CKPT) --data $(DEMO_DATA)/val --out $(DEMO_RUN)/val --tta 5 --force
	$(VFA) evaluate --model $(CKPT) --data $(DEMO_DATA)/test --out $(DEMO_RUN)/test --tta 5 \
		--threshold-from $(DEMO_RUN)/val/predictions.csv --force
	$(VFA) heatmap --model $(CKPT) --data $(DEMO_DATA)/test --out $(DEMO_RUN)/heatmaps \
		--boxes $(DEMO_DATA)/manifest.csv --force
	$(VFA) synth-cohort --predictions $(DEMO_RUN)/test/predictions.csv --out $(DEMO_RUN)/outcomes.csv --force
	$(VFA) cohort --predictions $(DEMO_RUN)/test/predictions.csv --outcomes $(DEMO_RUN)/outcomes.csv \
		--out $(DEMO_RUN)/cohort --adjust age,sex,bmd_tscore --reader label \
		--base age,sex,bmd_tscore,prior_fracture,glucocorticoids --force
	@echo "demo done: $(DEMO_RUN)/test_metrics.json, $(DEMO_RUN)/test/report.html, $(DEMO_RUN)/heatmaps/, $(DEMO_RUN)/cohort/cohort_report.html"
	@echo "read the test predictions in a browser: $(VFA) review --predictions $(DEMO_RUN)/test/predictions.csv --images $(DEMO_DATA)/test --heatmaps $(DEMO_RUN)/heatmaps --vertebrae $(DEMO_DATA)/vertebrae.csv --db $(DEMO_RUN)/review.sqlite"

# per-vertebra reading (docs/vertebrae.md): the same phantom as the demo (vertebra-demo synthesizes what
# cpu-demo does, so the test split is the same images) -> detector + landmark model -> test metrics
# per vertebra with CIs (the table is printed), vertebrae.csv, outline overlays. Its own target: it
# would push `make demo` past 20 minutes on 2 cores.
VERT_DATA ?= runs/demo-vertebra-data
VERT_RUN ?= runs/demo-vertebra
demo-vertebra: $(STAMP)
	$(VFA) synth --out $(VERT_DATA) --preset vertebra-demo --force
	$(VFA) train --preset vertebra-demo --train $(VERT_DATA)/manifest.csv:train --val $(VERT_DATA)/manifest.csv:val \
		--out $(VERT_RUN) --force
	$(VFA) evaluate --model $(VERT_RUN)/checkpoints/best.ckpt --data $(VERT_DATA)/manifest.csv:test \
		--out $(VERT_RUN)/test --force
	@echo "demo-vertebra done: $(VERT_RUN)/test/vertebra_report.html, $(VERT_RUN)/test/vertebrae.csv, $(VERT_RUN)/test/overlays/"
	@echo "read them in a browser: $(VFA) review --predictions $(VERT_RUN)/test/predictions.csv --images $(VERT_DATA) --vertebrae $(VERT_RUN)/test/vertebrae.csv --db $(VERT_RUN)/review.sqlite"

# -rs: every skip says why (a missing oracle says how to install it; under VFA_REQUIRE_ORACLES=1 it fails)
test: $(STAMP) oracles
	$(VENV)/bin/lint-imports
	$(VPY) -m pytest -q -rs -n 2 --dist loadgroup

# vfa vs the Keras baseline (../shared/bench/keras_seed.py) in one run: table on stdout, BENCHMARKS.md
KERAS_BENCH ?= ../shared/bench/keras_seed.py
bench: $(STAMP) $(KERAS_STAMP)
	$(VPY) benchmarks/bench.py --keras-python .venv-keras/bin/python --keras-script $(KERAS_BENCH) --out BENCHMARKS.md
	$(VPY) benchmarks/archive.py --keras-python .venv-keras/bin/python --out BENCHMARKS.md

# whole `vfa predict` processes vs the notebook's whole Keras job, ensembles, 100,000-file streaming
bench-archive: $(STAMP) $(KERAS_STAMP)
	$(VPY) benchmarks/archive.py --keras-python .venv-keras/bin/python --out BENCHMARKS.md

clean:
	rm -rf runs
