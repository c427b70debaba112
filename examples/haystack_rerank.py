"""mmrank in Haystack: a Pipeline InMemoryBM25Retriever -> MMRankRanker.

    pip install -e packages/mmrank-haystack
    python examples/haystack_rerank.py [--model jinaai/jina-reranker-m0] [--device cuda]

Image Documents carry their image as meta["file_path"] (what ImageFileToDocument produces) or as a blob.
"""

from __future__ import annotations

from _sample_data import QUERY, TEXTS, make_images, parse_args, run, scorer_options
from haystack import Document, Pipeline
from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
from haystack.dataclasses import ByteStream
from haystack.document_stores.in_memory import InMemoryDocumentStore
from haystack.utils import ComponentDevice
from haystack_integrations.components.rankers.mmrank import MMRankRanker


def main() -> None:
    args = parse_args(__doc__)
    images = make_images()
    store = InMemoryDocumentStore()
    store.write_documents([
        *(Document(content=t) for t in TEXTS),
        Document(content="Germany fact sheet (scanned page)", meta={"file_path": str(images["page"])}),
        Document(content="A small red house in Germany.", blob=ByteStream.from_file_path(images["photo"])),
    ])

    pipeline = Pipeline()
    pipeline.add_component("retriever", InMemoryBM25Retriever(document_store=store, top_k=5))
    device = ComponentDevice.from_str(args.device) if args.device else None
    pipeline.add_component("ranker", MMRankRanker(model=args.model, top_k=3, device=device,
                                                  reranker_kwargs=scorer_options(args)))
    pipeline.connect("retriever.documents", "ranker.documents")

    result = pipeline.run({"retriever": {"query": QUERY}, "ranker": {"query": QUERY}})
    print(f"query: {QUERY}")
    for rank, d in enumerate(result["ranker"]["documents"], start=1):
        kind = "text+image" if d.blob or d.meta.get("file_path") else "text"
        print(f"{rank}. score={d.score:.4f} [{kind}] {(d.content or '')[:60]}")


if __name__ == "__main__":
    run(main)
