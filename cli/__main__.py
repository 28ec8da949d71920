"""python -m cli: the same as the `facerec` command."""

from cli.main import main

main()
