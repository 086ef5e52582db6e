from fleetgate.cli import main

main()
