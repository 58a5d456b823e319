import sys

from harness.tools.bench import main

sys.exit(main())
