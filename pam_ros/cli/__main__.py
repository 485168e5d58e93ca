"""`python -m pam_ros.cli ...`: the same as the `pam-ros` command."""
import sys

from pam_ros.cli import main

sys.exit(main())
