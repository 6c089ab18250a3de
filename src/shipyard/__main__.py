from shipyard.cli.entry import main

main()
