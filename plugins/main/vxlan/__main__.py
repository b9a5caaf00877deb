"""`python -m plugins.main.vxlan`: the vxlan agent."""
import sys

from .agent import main

sys.exit(main())
