import sys

from freezelab.cli import main

sys.exit(main())
