"""tfds builder `llark_instruct` over the shards of `python -m data_prep write`.

Importing this package registers the builder; see `llark_instruct.py` for usage.
"""

from data_prep.tfds_llark_instruct.llark_instruct import LlarkInstruct

__all__ = ["LlarkInstruct"]
