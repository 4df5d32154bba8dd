from speckv.cli import main

main()
