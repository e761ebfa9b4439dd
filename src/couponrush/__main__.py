from couponrush.entrypoints.cli import main

main()
