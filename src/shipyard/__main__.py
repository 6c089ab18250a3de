from shipyard.entry import main

main()
