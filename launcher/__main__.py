import sys

from faceharmony.launcher.main import main

sys.exit(main())
