"""Benchmark of the cancel path: our function against raw HTTP, the openai SDK and a naive script.

`python -m bench.run` (or `make bench`) measures every case against the fine-tuning simulator
in a process of its own and writes `docs/benchmarks.md`, `docs/bench/results.json` and
`docs/bench/throughput.png`. Never imported by `shared/` or `function_app.py`.
"""
