"""`python -m capacity_service.cli`: the same as the `capacity` command."""

import sys

from capacity_service.cli import main

sys.exit(main())
