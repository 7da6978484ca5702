import sys

from faceharmony.clients.user_cli import main

sys.exit(main())
