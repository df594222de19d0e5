"""`python -m linepicker`: what the user service runs, so it needs no console script on PATH."""

from .cli import main

main()
