import sys

from faceharmony.server.main import main

sys.exit(main())
