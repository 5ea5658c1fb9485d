"""breakglass: a self-healing watchdog for a development VM on Proxmox."""

import warnings

__version__ = "0.1.0"

# asyncssh imports cryptography's DSA classes to read old keys, and cryptography 51 warns about
# DSA at that import. breakglass never uses DSA (probe connections pin ed25519 and the usual
# modern algorithms), so the warning would only tell an operator about a library's internals
# at every start. Set before any submodule imports asyncssh.
warnings.filterwarnings("ignore", message="DSA is deprecated", module=r"asyncssh(\.|$)")
