"""Chat-model access shared by instruction generation (`data_prep instruct`) and the GPT judges
(`llark_jax.eval.judge`): the fault-tolerant OpenAI Chat Completions client (`client`, needs
`openai`, not torch) and the reply errors a caller's parser raises to ask for a retry (`errors`)."""
