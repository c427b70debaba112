"""Scorers: the :class:`~mmrank.scorers.base.Reranker` interface and its backends (pointwise jina-reranker-m0,
listwise and pairwise instruct VLMs, remote rerank APIs), and the factory that builds one by mode."""
