"""`tensorflow_datasets` builder `llark_instruct`: the writer's clip records as a tfds dataset.

The shards written by `python -m data_prep write` are the builder's manual directory; every
`{split}-{encoder}-NNNNN-of-MMMMM.tfrecord` found there becomes part of split `{split}`:

    import tensorflow_datasets as tfds
    import data_prep.tfds_llark_instruct  # registers the builder
    ds = tfds.load("llark_instruct", split="train", data_dir=TFDS_DIR,
                   download_and_prepare_kwargs={"download_config":
                       tfds.download.DownloadConfig(manual_dir=SHARDS_DIR)})

Each element is one clip: `embedding` float32 [T, D] (decoded from the stored bfloat16/float16/
float32), `qa` a sequence of {question, answer, task}, string `clip_id`, `dataset`, `split`,
`encoder` and `metadata` (JSON text). Records that fail to decode are skipped and counted in the
log. Training reads the shards directly (`llark_jax.data.pipeline`); this builder is for
inspection and for users of the tfds ecosystem.
"""

from __future__ import annotations

import collections
import glob
import json
import logging
import os

import numpy as np
import tensorflow_datasets as tfds

from llark_jax.data.records import SHARD_SUFFIX, RecordError, decode_clip, iter_records

log = logging.getLogger(__name__)


class LlarkInstruct(tfds.core.GeneratorBasedBuilder):
    """LLark instruction data: one example per clip with its audio embedding and QA pairs."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Schema of docs/architecture.md, decision 3."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Run `python -m data_prep write ... --output-dir DIR` and pass DIR as manual_dir.")

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "clip_id": text, "dataset": text, "split": text, "encoder": text,
                "embedding": tfds.features.Tensor(shape=(None, None), dtype=np.float32,
                                                  encoding="bytes"),
                "qa": tfds.features.Sequence(
                    {"question": text, "answer": text, "task": text}),
                "metadata": text,
            }),
            description=__doc__,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        shards = collections.defaultdict(list)
        for path in sorted(glob.glob(os.path.join(dl_manager.manual_dir, f"*{SHARD_SUFFIX}"))):
            shards[os.path.basename(path).split("-", 1)[0]].append(path)
        if not shards:
            raise FileNotFoundError(f"no *{SHARD_SUFFIX} shards in {dl_manager.manual_dir}")
        return {split: self._generate_examples(paths) for split, paths in shards.items()}

    def _generate_examples(self, paths: list[str]):
        skipped = 0
        for path in paths:
            try:
                for payload in iter_records(path):
                    try:
                        clip = decode_clip(payload)
                    except RecordError as err:
                        skipped += 1
                        log.warning("skipping record: %s", err)
                        continue
                    yield clip.clip_id, {
                        "clip_id": clip.clip_id, "dataset": clip.dataset, "split": clip.split,
                        "encoder": clip.encoder,
                        "embedding": clip.embedding.astype(np.float32),
                        "qa": [{"question": p.question, "answer": p.answer, "task": p.task}
                               for p in clip.qa],
                        "metadata": json.dumps(clip.metadata, sort_keys=True),
                    }
            except RecordError as err:  # a corrupt frame ends that shard
                skipped += 1
                log.warning("stopping shard: %s", err)
        if skipped:
            log.warning("llark_instruct: %d records skipped", skipped)

