"""`python -m interfaces.cli`: the `vigil` command, as `vigil up` starts its processes."""

from interfaces.cli.main import main

raise SystemExit(main())
