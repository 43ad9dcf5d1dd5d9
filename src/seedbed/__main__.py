"""`python -m seedbed …`, which is also how torchrun starts it (`torchrun … -m seedbed grow …`)."""

from seedbed.cli import main

main()
