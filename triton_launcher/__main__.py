import sys

from faceharmony.triton_launcher.main import main

sys.exit(main())
