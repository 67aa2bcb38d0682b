"""MT-CP (WACV 2025) family: configuration here; the model needs ``mtdp_ros[mtcp]``."""

from .config import MTCPConfig

__all__ = ['MTCPConfig']
