"""`python -m vfa.cli ...`, the same as the `vfa` console script."""
import os
import sys

from vfa.cli import main

# only inherited by processes this one starts (e.g. DDP workers): keeps their output quiet
os.environ.setdefault("PYTHONWARNINGS", "ignore")
sys.exit(main())
