"""`make demo` (`python -m llark_jax demo`): the whole pipeline on embedded defaults.

`cli` reads the flags and prints the end of a run (`--system musilingo` dispatches to
`musilingo`), `run` runs the LLark stages, `eval` asks the paper's prompts with own and shuffled
audio, `report` scores and plots. The demo imports product code; product code imports nothing
from here (tests/test_layering.py).
"""

from llark_jax.demo.cli import main

__all__ = ["main"]
