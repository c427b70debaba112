"""Train your own listwise reranker (Rank-Nexus recipe): distil → select → train → use.

* :mod:`mmrank.train.records` — the JSONL record format;
* :mod:`mmrank.train.distill` — ``mmrank distill`` (any mmrank Reranker as the teacher; resumable);
* :mod:`mmrank.train.select` — ``mmrank select`` (CLIP quality filter, confidence top-k, Algorithm 1);
* :mod:`mmrank.train.loss` — Plackett–Luce (eq. 4/8/9, τ = 0.1) and yes/no losses;
* :mod:`mmrank.train.trainer` — ``mmrank train`` (LoRA via transformers' Trainer + peft, curriculum stages).

The trained adapter folder loads by path wherever mmrank loads an instruct model (``ListwiseReranker``,
``PairwiseReranker``, ``mmrank rank``, ``mmrank serve``, the framework adapters). Training needs the optional
extra: ``pip install 'mmrank[train]'``.
"""
