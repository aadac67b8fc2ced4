"""`python -m ds2d2_yolo`: the same command as `ds2d2-yolo`."""

from ds2d2_yolo.cli import main

main()
