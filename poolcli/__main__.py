from poolcli.cli import main

main()
