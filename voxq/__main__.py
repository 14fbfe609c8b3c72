"""`python -m voxq` runs the CLI."""

import sys

from voxq.cli import main

sys.exit(main())
