"""`python -m llark_jax benchmark NAME`: a dataset in its published layout -> a scored report.

One module per dataset layout (`giantsteps`, `gtzan`, `medleydb`, `musicnet`, `musiccaps`,
`mcq_data`), the benchmark table (`registry`), clip preparation (`clips`), the model's answers
(`runner`), baselines (`baselines`), scoring (`scoring`, `mcq`), the report (`report`) and the
command (`cli`). docs/eval.md shows the commands and a sample report.
"""
