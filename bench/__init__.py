"""Benchmarks: each ``bench/bench_<name>.py`` has ``main(argv) -> int`` and prints its table."""
