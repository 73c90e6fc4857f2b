"""`python -m mesh`: the `mesh` command without relying on PATH.

The agent starts its sidecar proxies this way (`<its own python> -m mesh connect proxy
...`), so a proxy always runs from the same installation as its agent.
"""

import sys

from mesh.agent.cli.main import main

sys.exit(main())
