import sys

from saga_fabricnet.cli import main

sys.exit(main())
