"""The paper's evaluation prompts (key, tempo, instruments), asked verbatim of every eval clip.

The offline instruction generator (`data_prep instruct --backend offline`) emits the same strings
as training questions with short, parseable answers, so a model trained on them is scored on the
questions it saw; the demo's eval (`llark_jax.demo.eval`) asks them of held-out clips.
"""

from __future__ import annotations

KEY_PROMPT = "What is the key of this song?"
TEMPO_PROMPT = "What is the tempo of this song?"
INSTRUMENTS_PROMPT = "List the instruments you hear in this clip, including vocals and drums."
