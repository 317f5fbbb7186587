"""Benchmarks of triton_focal against the compositions people write, with results as data.

``python -m perf.sweep`` measures, ``perf.plot`` and ``perf.summary`` redraw from the JSON.
"""
