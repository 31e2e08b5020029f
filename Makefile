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

.PHONY: demo demo-vertebra demo-clinical test venv clean bench bench-archive oracles

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

# the clinical phantom (issue 27; docs/phantom.md): each vendor's own phantom (500 scans, 150 held out) ->
# both families trained on each vendor -> each evaluated on both vendors' test splits (within and across
# vendors) -> one table (vfa cross-vendor). Its own target: about 20 minutes on 2 cores.
CLIN_DATA ?= runs/demo-clinical-data
CLIN_RUN ?= runs/demo-clinical
CLIN_EVAL = $(VFA) evaluate --model $(CLIN_RUN)/$(1)-$(2)/checkpoints/best.ckpt --data $(CLIN_DATA)/$(3)/manifest.csv:test \
	--out $(CLIN_RUN)/$(1)-$(2)/on-$(3) --force
demo-clinical: $(STAMP)
	$(VFA) synth --preset clinical-demo --vendor hologic --out $(CLIN_DATA)/hologic --force
	$(VFA) synth --preset clinical-demo --vendor lunar --out $(CLIN_DATA)/lunar --force
	$(VFA) train --preset clinical-demo --train $(CLIN_DATA)/hologic/manifest.csv:train \
		--val $(CLIN_DATA)/hologic/manifest.csv:val --out $(CLIN_RUN)/image-hologic --force
	$(VFA) train --preset clinical-demo --train $(CLIN_DATA)/lunar/manifest.csv:train \
		--val $(CLIN_DATA)/lunar/manifest.csv:val --out $(CLIN_RUN)/image-lunar --force
	$(VFA) train --preset clinical-vertebra-demo --train $(CLIN_DATA)/hologic/manifest.csv:train \
		--val $(CLIN_DATA)/hologic/manifest.csv:val --out $(CLIN_RUN)/vertebra-hologic --force
	$(VFA) train --preset clinical-vertebra-demo --train $(CLIN_DATA)/lunar/manifest.csv:train \
		--val $(CLIN_DATA)/lunar/manifest.csv:val --out $(CLIN_RUN)/vertebra-lunar --force
	$(call CLIN_EVAL,image,hologic,hologic) --gallery 0
	$(call CLIN_EVAL,image,hologic,lunar) --gallery 0
	$(call CLIN_EVAL,image,lunar,lunar) --gallery 0
	$(call CLIN_EVAL,image,lunar,hologic) --gallery 0
	$(call CLIN_EVAL,vertebra,hologic,hologic)
	$(call CLIN_EVAL,vertebra,hologic,lunar)
	$(call CLIN_EVAL,vertebra,lunar,lunar)
	$(call CLIN_EVAL,vertebra,lunar,hologic)
	$(VFA) cross-vendor $(CLIN_RUN)

# -rs: every skip says why (a missing oracle says how to install it; under VFA_REQUIRE_ORACLES=1 it fails)
test: $(STAMP) oracles
	$(VENV)/bin/lint-imports
	$(VPY) -m pytest -q -rs -n 2 --dist loadgroup

# vfa vs the Keras baseline (../shared/bench/keras_seed.py) in one run: table on stdout, BENCHMARKS.md.
# e2e.py: the default `vfa predict` vs the notebook's whole Keras job at 48 and 1,000 files, max dP
# against fp32 and the start-up breakdown (issue 29; about 30 minutes on 2 cores; E2E_SIZES=48 for less)
KERAS_BENCH ?= ../shared/bench/keras_seed.py
E2E_SIZES ?= 48,1000
bench: $(STAMP) $(KERAS_STAMP)
	$(VPY) benchmarks/bench.py --keras-python .venv-keras/bin/python --keras-script $(KERAS_BENCH) --out BENCHMARKS.md
	$(VPY) benchmarks/e2e.py --keras-python .venv-keras/bin/python --sizes $(E2E_SIZES) --out BENCHMARKS.md
	$(VPY) benchmarks/archive.py --keras-python .venv-keras/bin/python --out BENCHMARKS.md

# whole `vfa predict` processes vs the notebook's whole Keras job, ensembles, 100,000-file streaming
bench-archive: $(STAMP) $(KERAS_STAMP)
	$(VPY) benchmarks/archive.py --keras-python .venv-keras/bin/python --out BENCHMARKS.md

clean:
	rm -rf runs
