from ecmctl.cli.app import main

main()
