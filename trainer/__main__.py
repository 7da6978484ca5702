import sys

from faceharmony.trainer.main import main

sys.exit(main())
