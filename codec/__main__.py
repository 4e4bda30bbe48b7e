import sys

from codec.cli.main import main

sys.exit(main())
