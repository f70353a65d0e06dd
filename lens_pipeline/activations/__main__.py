"""`python -m lens_pipeline.activations`."""

import sys

from lens_pipeline.activations.cli import main

sys.exit(main())
