from services.identity.server import main

main()
