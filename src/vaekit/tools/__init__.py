"""The tools around the engine: they measure it (bench, bench_dist, gpu_check), show it (demo) and say
what it would do here (doctor). The engine (vaekit/*.py, ops/, arch/) never imports them; they run
through the CLI (``vaekit bench``, ``vaekit demo``, ...) or ``python -m vaekit.tools.<name>``."""

__all__: list[str] = []  # the tools are modules, each with its own __all__
