"""Lab tooling: measuring, reproducing, tuning, publishing and drawing the figures.

Built on the library (and on ``deploy`` for the speed of exported models); nothing in the
library or in ``deploy`` imports from here.
"""

DEFAULT_SEEDS = 5  # seeds behind every published mean ± std
