import sys

from tcmusim.mkimage import main

sys.exit(main())
