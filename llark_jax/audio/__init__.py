"""Audio shared by the offline stage (`data_prep`) and `infer`/`serve`: loading (`io`) and the
frozen encoders that turn waveforms into `[T, D]` frames (`encoders`, registry `get_encoder`).

Importing these modules never imports torch: the registry names encoders by import path, and the
torch encoders (`jukebox`, `mert`) import torch inside the functions that run the models.
"""
