import sys

from llark_jax.cli import main

sys.exit(main())
