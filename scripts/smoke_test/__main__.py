from scripts.smoke_test.cli import main

raise SystemExit(main())
