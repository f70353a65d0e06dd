"""python -m lens_pipeline.corpus: build or update the corpus-level outputs of a save path."""

import sys

from lens_pipeline.corpus.stage import main

sys.exit(main())
