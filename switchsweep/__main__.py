import sys

from switchsweep.cli import main

sys.exit(main())
