"""``python -m nccidfs`` runs the command line."""

from nccidfs.cli import main

raise SystemExit(main())
