"""mmrank in LangChain: ContextualCompressionRetriever with the MMRankRerank compressor.

    pip install -e "packages/langchain-mmrank[classic]"
    python examples/langchain_rerank.py [--model jinaai/jina-reranker-m0] [--device cuda]

Image documents name their image in metadata: "image_path", "image_url", "image_base64" or "image".
The vector store uses LangChain's fake embedding so that the example runs offline; use a real one.
"""

from __future__ import annotations

from _sample_data import QUERY, TEXTS, make_images, parse_args, run, scorer_options
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_mmrank import MMRankRerank


def main() -> None:
    args = parse_args(__doc__)
    images = make_images()
    docs = [Document(page_content=t, id=f"text-{i}") for i, t in enumerate(TEXTS)]
    docs.append(Document(page_content="", metadata={"image_path": str(images["page"])}, id="fact-sheet"))
    docs.append(Document(page_content="A small red house.", metadata={"image_path": str(images["photo"])},
                         id="house"))

    store = InMemoryVectorStore.from_documents(docs, embedding=DeterministicFakeEmbedding(size=64))
    retriever = ContextualCompressionRetriever(
        base_compressor=MMRankRerank(model=args.model, device=args.device, top_n=3,
                                     reranker_kwargs=scorer_options(args)),
        base_retriever=store.as_retriever(search_kwargs={"k": len(docs)}),
    )
    print(f"query: {QUERY}")
    for rank, d in enumerate(retriever.invoke(QUERY), start=1):
        print(f"{rank}. score={d.metadata['relevance_score']:.4f} [{d.id}] {d.page_content[:60]}")


if __name__ == "__main__":
    run(main)
