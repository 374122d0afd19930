# The course's commands. Each target sets itself up: a fresh clone needs nothing else.
#   make course   run every notebook in order, headless, in the current COURSE_MODE
#   make test     unit tests + every notebook under nbval (what CI runs)
#   make lab      open JupyterLab on the student build (build/student/: solutions stubbed; built once, your answers kept)
#   make teach    open JupyterLab on notebooks/, the teacher's copy with every solution
#   make bench    every benchmark under bench/, one table of ratios
#   make download pre-fetch GPT-2 (124M) into the local Hugging Face cache for an offline workshop
#   make student  the workshop build: notebooks with the solutions stubbed out, in build/student/
#   make map      merge the minutes `make course` measured into the notebooks, regenerate the README's course map
#   make outputs NB="03 06"   execute those notebooks in cpu mode, in place: the outputs to commit
#   make gpu-check            the gpu mode end to end on a CUDA machine (a dry run of the same plan without one)
#   make constraints          pin the installed versions (after `make test` passed) into constraints.txt

PYTHON_BOOT ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
# torch first, pinned to the CPU build these machines carry; elsewhere: make test TORCH_SPEC='torch>=2.2'
TORCH_SPEC  ?= torch==2.13.0
# the exact versions the tests passed with; `make setup CONSTRAINTS=` installs the newest that pyproject.toml allows
CONSTRAINTS ?= constraints.txt
STAMP       := $(VENV)/.installed

.PHONY: course test lab teach bench download setup clean student map outputs constraints gpu-check

$(PY):
	$(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml $(CONSTRAINTS) | $(PY)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[serve,dev]"
	touch $(STAMP)

setup: $(STAMP)

course: $(STAMP)
	$(PY) -m tools.course $(if $(FROM),--from $(FROM))

test: $(STAMP)
	COURSE_MODE=smoke HF_HUB_OFFLINE=1 TQDM_DISABLE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 $(PY) -m pytest

lab: $(STAMP)
	$(PY) -m tools.student --if-missing
	$(VENV)/bin/jupyter lab build/student/

teach: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

bench: $(STAMP)
	$(PY) -m bench

download: $(STAMP)
	$(PY) -c "from helpers.models import prefetch_gpt2; print(prefetch_gpt2())"

student: $(STAMP)
	$(PY) -m tools.student

map: $(STAMP)
	$(PY) -m tools.course --minutes --map

outputs: $(STAMP)
	@test -n "$(NB)" || { echo 'name the notebooks to re-run, e.g. make outputs NB="03 06"'; exit 2; }
	COURSE_MODE=cpu $(PY) -m tools.course --in-place $(NB)

gpu-check: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m tools.gpu_check

constraints: $(STAMP)
	$(PY) -m tools.constraints

clean:
	rm -rf artifacts build
