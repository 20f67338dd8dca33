import sys

from flrt.cli import main

sys.exit(main())
