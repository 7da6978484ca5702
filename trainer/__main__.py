from faceharmony.trainer.main import main

main()
