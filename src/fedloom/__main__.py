"""``python -m fedloom`` runs the command line."""

from fedloom.cli import main

main()
