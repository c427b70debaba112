"""mkdocs hook: the docstrings use Sphinx cross-reference roles (``:class:`Reranker```), which ``help()``
readers see as plain text; in the HTML API reference the role name would show before the code span.
Drop it, keeping the code span."""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|data|mod|attr|exc|obj|const):(?=<code>)")


def on_page_content(html: str, **kwargs) -> str:
    return _ROLE.sub("", html)
