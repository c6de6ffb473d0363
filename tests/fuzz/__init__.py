"""Property-based fuzzing of every parser that takes bytes from the network (issue 9).

Short runs are part of ``pytest tests`` (the derandomized ``shoal-fuzz-ci`` profile); a long run is
``python -m tests.fuzz --examples 100000``, which prints how many cases each target tried.
The Range parser has its own fuzz tests beside it.
"""
