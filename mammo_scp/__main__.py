from mammo_scp.cli import main

raise SystemExit(main())
