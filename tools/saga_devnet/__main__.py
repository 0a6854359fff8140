from saga_devnet.cli import main

main()
