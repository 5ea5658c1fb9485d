"""breakglass: a self-healing watchdog for a development VM on Proxmox."""

__version__ = "0.1.0"
