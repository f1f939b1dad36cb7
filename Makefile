# One command each: `make demo` and `make test` set up .venv from scratch when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,decoders]'
	touch $(STAMP)

# The CR chest radiograph (MONOCHROME1, 15-bit) that the pydicom-data package ships.
CHEST = $$($(BIN)/python -c 'from pydicom.data import get_testdata_file as g; print(g("RG1_UNCR.dcm"))')

demo: $(STAMP)
	$(BIN)/medsingan inspect "$(CHEST)" --preview demo_output/chest_preview.png
	$(BIN)/medsingan train "$(CHEST)" --modality xray --max-size 96 --preset concurrent \
		--iters 100 --out demo_output/chest_run --overwrite
	$(BIN)/medsingan info demo_output/chest_run
	@echo "run directory: demo_output/chest_run (samples_scale_*.png, curves.png, history.csv)"
	@if $(BIN)/python -c "from medsingan.metrics.sifid import SifidScorer as S, find_inception_weights as f; S(f())" \
		2>/dev/null; then sifid=""; else sifid="--no-sifid"; \
		echo "note: no Inception weights for SIFID here: scoring without SIFID (see README)"; fi; \
	rm -rf demo_output/samples demo_output/chest_samples.csv; \
	$(BIN)/medsingan augment demo_output/chest_run --n 12 --start-scale N-1,N \
		--out demo_output/samples --manifest demo_output/chest_samples.csv --overwrite $$sifid
	@echo "samples from N-1 and N side by side, their scores under them: demo_output/samples/sweep.png"
	@echo "first rows of the manifest:"
	@head -n 4 demo_output/chest_samples.csv

# Test modules run on up to 4 processes (pytest-xdist), a module's tests on one process so
# that its trained-run fixtures are built once; each test uses one thread (tests/conftest.py).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist loadscope

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs demo_output .pytest_cache
