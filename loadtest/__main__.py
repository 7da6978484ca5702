import sys

from faceharmony.loadtest.main import main

sys.exit(main())
