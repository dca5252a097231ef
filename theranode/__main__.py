"""``python -m theranode``: the same command line as the ``theranode`` script."""

import sys

from theranode.service.cli.main import main

sys.exit(main())
