"""Real-guest end-to-end tests: a Linux guest under QEMU mounts a share served by the daemon."""
