import sys

from tcmusim.cli import main

sys.exit(main())
