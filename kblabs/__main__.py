from kblabs.cli import main

raise SystemExit(main())
