"""`python -m modalscope` (also what `torchrun -m modalscope` runs)."""

from modalscope.cli import main

raise SystemExit(main())
