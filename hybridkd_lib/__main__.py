from hybridkd_lib.cli import main

raise SystemExit(main())
