"""`python -m masksub_exp.results`: see masksub_exp/results/command.py."""

from .command import main

main()
