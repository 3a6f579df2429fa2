import sys

from jaxface.cli import main

sys.exit(main())
