"""`python -m lens_pipeline.figures`."""

import sys

from lens_pipeline.figures.cli import main

sys.exit(main())
