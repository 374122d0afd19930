"""Course tooling, for whoever maintains the course; nothing here is for the learner or imported by a notebook.

Run each from the repository root with ``python -m tools.NAME`` (``--help`` says how):

- ``tools.course``: run the notebooks headless (``make course``), write their outputs back
  (``make outputs``), merge measured minutes and regenerate the README's course map (``make map``);
- ``tools.student``: the workshop build with the solutions stubbed out (``make student``);
- ``tools.constraints``: pin the installed versions into ``constraints.txt`` (``make constraints``);
- ``tools.export``: write ``helpers/gpt.py`` from notebook 03's cells tagged ``export``;
- ``tools.gpu_check``: the gpu mode end to end on a CUDA machine, or its dry run on a CPU (``make gpu-check``);
- ``tools.code_stats``: notebook and helpers code lines, the longest functions, import cycles and repeated code in ``helpers/``;
- ``tools.collect_data``: how ``data/raw/`` and the GPT-2 tokenizer files were obtained;
- ``tools.pretrain_tiny_base``: how ``data/models/tiny-gpt2-base/`` was trained.
"""
