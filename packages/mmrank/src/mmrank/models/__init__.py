"""Models: jina-reranker-m0's architecture and its processing, the instruct-VLM wrapper, loading and
random-weight (dummy) checkpoints. Everything here imports torch/transformers."""
