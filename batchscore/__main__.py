from batchscore.cli import main

main()
