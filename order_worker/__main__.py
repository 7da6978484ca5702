import sys

from faceharmony.order_worker.main import main

sys.exit(main())
