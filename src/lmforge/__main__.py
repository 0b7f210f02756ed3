"""`python -m lmforge ...`: the same CLI as the `lmforge` command."""
from lmforge.cli import main

main()
