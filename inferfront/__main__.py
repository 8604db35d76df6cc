import sys

from inferfront.cli import main

sys.exit(main())
