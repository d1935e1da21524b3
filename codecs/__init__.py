"""telecodecs: pure, synchronous telephony audio (G.711, resampling, framing, WAV).

The folder is ``codecs/`` but the import name is ``telecodecs`` (mapped in pyproject's
``[tool.setuptools] package-dir``): a top-level package named ``codecs`` would be shadowed by
the standard library's ``codecs`` module, which the interpreter imports at start-up.
No asyncio, no logging, no clocks here.
"""
