"""`python -m mrbridge …` (what torchrun launches) runs the CLI."""

from mrbridge.cli import main

main()
