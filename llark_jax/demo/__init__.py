"""`make demo` (`python -m llark_jax demo`): the whole pipeline on embedded defaults.

`run` orchestrates the stages (LLark; `--system musilingo` dispatches to `musilingo`), `eval`
asks the paper's prompts with own and shuffled audio, `report` scores and plots. The demo imports
product code; product code imports nothing from here (tests/test_layering.py).
"""

from llark_jax.demo.run import main

__all__ = ["main"]
