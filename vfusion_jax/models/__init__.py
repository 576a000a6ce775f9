"""Flax (linen) modules of the VideoFusion network."""

from vfusion_jax.models.network import VideoFusion, validate_inputs

__all__ = ['VideoFusion', 'validate_inputs']
