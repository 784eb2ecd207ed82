"""Build, benchmark and report the 2012 virtio-blk data-plane RFC for qemu-kvm."""

__version__ = "0.1.0"

PINNED_COMMIT = "a0bc8c313ce7da8937e190b1e0cfd051a9ba243e"
DEFAULT_SOURCE = "https://git.kernel.org/pub/scm/virt/kvm/qemu-kvm.git"
