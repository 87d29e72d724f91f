"""The madmom annotator (tempo, key, chords, beats with bar positions) as the reference runs it.

`MadmomAnnotator` builds madmom's four pipelines once (`get_annotator`: one per process) and
annotates mono float32 audio at 44.1 kHz; field names, types and rounding are the reference's
(spec §5.3; `data_prep.annotate` documents the fields and crops them to clips). `tempo_bpm` and
`key_label` are the tempo and key parts alone: the benchmark's madmom baseline
(`python -m llark_jax benchmark giantsteps-key|giantsteps-tempo`) is the annotator itself.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from llark_jax.audio.io import SAMPLE_RATE

MAX_ANNOTATION_S = 360.0  # annotation reads at most this much of a track
MIN_ANNOTATION_S = 1.0  # madmom fails (or returns NaN tempo) on shorter signals

def _signal(audio_n: Any) -> Any:
    """A madmom `Signal` (mono, 44.1 kHz) of an array; a `Signal` is returned as it is."""
    from madmom.audio.signal import Signal

    if isinstance(audio_n, Signal):
        return audio_n
    return Signal(np.asarray(audio_n, np.float32), sample_rate=SAMPLE_RATE, num_channels=1)


class MadmomAnnotator:
    """The four madmom pipelines, loaded once. Call with mono float32 audio at 44.1 kHz."""

    def __init__(self) -> None:
        import warnings

        import onnxruntime
        from madmom.features.beats import RNNBeatProcessor
        from madmom.features.chords import CNNChordFeatureProcessor, CRFChordRecognitionProcessor
        from madmom.features.downbeats import DBNDownBeatTrackingProcessor, RNNDownBeatProcessor
        from madmom.features.key import CNNKeyRecognitionProcessor
        from madmom.features.tempo import TempoEstimationProcessor

        onnxruntime.set_default_logger_severity(3)  # silence per-call shape warnings
        warnings.filterwarnings("ignore", message="Usage of `method` is deprecated")
        self.beat_acts = RNNBeatProcessor()
        self.tempo = TempoEstimationProcessor(fps=100)
        self.key = CNNKeyRecognitionProcessor()
        self.chord_features = CNNChordFeatureProcessor()
        self.chords = CRFChordRecognitionProcessor(fps=10)
        self.downbeat_acts = RNNDownBeatProcessor()
        self.downbeats = DBNDownBeatTrackingProcessor(beats_per_bar=[3, 4], fps=100)

    def __call__(self, audio_n: np.ndarray) -> dict[str, Any]:
        """Annotate ``audio_n`` (shape ``[n_samples]``, 44.1 kHz) -> the four reference fields."""
        signal = _signal(audio_n)
        beats = self.downbeats(self.downbeat_acts(signal))
        return {
            "tempo_in_beats_per_minute_madmom": self.tempo_bpm(signal),
            "downbeats_madmom": [{"time": float(t), "beat_number": int(b)} for t, b in beats],
            "chords": [
                {"start_time": round(float(s), 1), "end_time": round(float(e), 1),
                 "chord": chord_label(label)}
                for s, e, label in self.chords(self.chord_features(signal))
            ],
            "key": self.key_label(signal),
        }

    def tempo_bpm(self, audio_n: Any) -> float | None:
        """``round(top tempo, 1)`` in BPM, None when madmom finds none (a signal or an array)."""
        tempi = self.tempo(self.beat_acts(_signal(audio_n)))
        tempo = float(tempi[0][0]) if len(tempi) else math.nan
        return round(tempo, 1) if math.isfinite(tempo) else None

    def key_label(self, audio_n: Any) -> str:
        """One of madmom's 24 key labels (``"Bb major"``), from a signal or an array."""
        from madmom.features.key import key_prediction_to_label

        return key_prediction_to_label(self.key(_signal(audio_n)))


def chord_label(madmom_label: str) -> str:
    """Reference label rewrite: ``A#:maj`` -> ``A#major``, ``N`` -> ``no chord``."""
    if madmom_label == "N":
        return "no chord"
    return madmom_label.replace(":maj", "major").replace(":min", "minor")


_ANNOTATOR: MadmomAnnotator | None = None


def get_annotator() -> MadmomAnnotator:
    """The process-wide annotator (built on first use; also a stage-runner worker initializer)."""
    global _ANNOTATOR
    if _ANNOTATOR is None:
        _ANNOTATOR = MadmomAnnotator()
    return _ANNOTATOR
