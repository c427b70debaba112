"""mmrank quickstart: rank text, image and text+image documents for a query with jina-reranker-m0.

    python examples/quickstart.py                       # the real model (downloads ~4 GB once)
    python examples/quickstart.py --model ./my-copy --device cpu
    python examples/quickstart.py --load-format dummy         # no download: random weights, scores mean nothing
"""

from __future__ import annotations

import mmrank
from _sample_data import QUERY, TEXTS, make_images, parse_args, run, scorer_options


def main() -> None:
    args = parse_args(__doc__)
    images = make_images()
    reranker = mmrank.load_reranker("pointwise", args.model, device=args.device, **scorer_options(args))

    documents = [
        *TEXTS,                                                        # plain strings are text documents
        mmrank.Document(image=images["page"], id="fact-sheet"),        # an image (path, URL, bytes, PIL, base64)
        mmrank.Document(text="A small red house.", image=images["photo"], id="house"),  # text + image
    ]
    print(f"query: {QUERY}")
    for rank, r in enumerate(reranker.rank(QUERY, documents, top_n=4), start=1):
        doc = r.document
        label = doc.id or (doc.text[:60] if doc.text else "")
        print(f"{rank}. score={r.score:.4f} [{doc.modality}] {label}")

    # An image query works the same way.
    best = reranker.rank(mmrank.Query(image=images["page"]), TEXTS, top_n=1)[0]
    print(f"image query -> score={best.score:.4f} [{best.document.modality}] {best.document.text}")


if __name__ == "__main__":
    run(main)
