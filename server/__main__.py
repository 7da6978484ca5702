from faceharmony.server.main import main

main()
