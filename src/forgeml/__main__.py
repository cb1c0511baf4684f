from forgeml.cli import main

main()
