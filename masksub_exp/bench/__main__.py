"""`python -m masksub_exp.bench`: see masksub_exp/bench/step.py (and loader.py for --loader / --train)."""

from .step import main

main()
