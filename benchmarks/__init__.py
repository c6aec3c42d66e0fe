"""CPU benchmarks of jaxmath against reference libraries (``make bench``).

Run ``python -m benchmarks.run`` (all), ``--only entropy,gd_sweep`` (a subset)
or ``--quick`` (few repeats, for development). Results go to
``benchmarks/results/cpu.json`` and a printed table.
"""
