"""`python -m mbsearch`."""

from mbsearch.cli import main

main()
