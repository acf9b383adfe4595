from lrtrain.bench.cli import main

main()
