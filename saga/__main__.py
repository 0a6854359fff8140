from saga.entrypoints.cli.main import main

main()
