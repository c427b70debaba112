"""Models: jina-reranker-m0's architecture and its processing, the instruct-VLM wrapper, loading and
random-weight (dummy) checkpoints, loading options. Everything here but ``options`` (and ``loading``) imports
torch/transformers."""
