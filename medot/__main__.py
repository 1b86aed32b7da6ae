from medot.cli import main

raise SystemExit(main())
