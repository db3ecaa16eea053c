from remote_kernel.cli import main

raise SystemExit(main())
