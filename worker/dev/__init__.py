"""Local stand-ins for tests and demos: the sandbox API, an embedded Redis, the demo.

Production code never imports this package (tests/test_layers.py checks it); only the CLI and
the tests do.
"""
