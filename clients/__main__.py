from faceharmony.clients.user_cli import main

main()
