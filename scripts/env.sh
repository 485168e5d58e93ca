# source scripts/env.sh: activate the pam_ros venv (after `make setup`).
_pam_ros_root=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)
# shellcheck disable=SC1091
. "$_pam_ros_root/.venv/bin/activate"
# Weights are local files: never wait on the Hugging Face Hub (downloads use `pam-ros download`).
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
export TRANSFORMERS_OFFLINE=${TRANSFORMERS_OFFLINE:-1}
unset _pam_ros_root
