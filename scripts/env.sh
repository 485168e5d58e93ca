# source scripts/env.sh: activate the pam_ros venv (after `make setup`): `pam-ros`, `pam_ros_node` on PATH.
# It sets no offline switch: `pam-ros download` is the only command that goes to the Hugging Face Hub, and
# every other one finds weights by name from local files only (local_files_only), online or not.
_pam_ros_root=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)
# shellcheck disable=SC1091
. "$_pam_ros_root/.venv/bin/activate"
unset _pam_ros_root
