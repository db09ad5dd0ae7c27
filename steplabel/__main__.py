import sys

from steplabel.pipelines.cli import main

if __name__ == "__main__":
    sys.exit(main())
