"""The one place mmrank's version is written: ``pyproject.toml`` reads it (``[tool.setuptools.dynamic]``) and
``mmrank.__version__`` re-exports it; the adapters' ``mmrank>=X.Y,<X.Y+1`` bounds are checked against it
(``tests/test_packaging.py``)."""

__version__ = "0.2.0"
