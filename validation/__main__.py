"""``python -m validation [--quick] [--only ID ...]``."""

from validation.run import main

raise SystemExit(main())
